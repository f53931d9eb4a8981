"""
Tests for L{portserver.status.page}: the status page's files, shipped in the package and
served at C{/} and C{/static/NAME} with their content types, and written so that a strict
Content-Security-Policy (no inline script or style, nothing from elsewhere) lets them run.

What the page does in a browser is tested in L{tests.test_browser}.
"""

from __future__ import annotations

import re
import zipfile
from html.parser import HTMLParser
from importlib import resources

from twisted.trial.unittest import SynchronousTestCase

from portserver.server import PortServer
from portserver.status.page import CONTENT_TYPES, pageResources, staticFiles
from portserver.status.web import StatusService
from tests.support import PortReactor, makePlan, spec
from tests.test_status_web import fetch

SHIPPED = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


def packaged(name: str) -> bytes:
    return resources.files("portserver.status").joinpath("static", name).read_bytes()


class Elements(HTMLParser):
    """
    Every start tag of a document: C{(tag, attributes)}, and the text inside each
    C{<script>} and C{<style>}.
    """

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.inside: list[tuple[str, str]] = []
        self._open = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._open = tag if tag in ("script", "style") else None

    def handle_data(self, data):
        if self._open:
            self.inside.append((self._open, data))

    def handle_endtag(self, tag):
        self._open = None


class FilesTests(SynchronousTestCase):
    """
    The files in the package.
    """

    def test_importable(self):
        """
        The page's files are package data of C{portserver.status}, readable through
        L{importlib.resources} (as an installed copy reads them), and L{staticFiles} is
        exactly them.
        """
        for name in SHIPPED:
            self.assertTrue(packaged(name), name)
        self.assertEqual(staticFiles(), {name: packaged(name) for name in SHIPPED})

    def test_setupShipsThem(self):
        """
        C{setup.cfg} declares them as package data (the wheel test below checks that it
        works).
        """
        import configparser
        import os
        config = configparser.ConfigParser()
        config.read(os.path.join(os.path.dirname(os.path.dirname(__file__)), "setup.cfg"))
        self.assertEqual(config["options.package_data"]["portserver.status"].split(),
                         ["static/*"])

    def test_inTheWheel(self):
        """
        SLOW (builds the wheel, once with L{tests.test_packaging}): the wheel built from
        the checkout ships every file of the page, unchanged.
        """
        from tests.test_packaging import builtWheel
        with zipfile.ZipFile(builtWheel()) as wheel:
            for name in SHIPPED:
                self.assertEqual(wheel.read(f"portserver/status/static/{name}"),
                                 packaged(name))

    def test_noInlineScriptOrStyle(self):
        """
        The page has no inline script, event handler attribute, C{<style>} or C{style}
        attribute, and loads nothing from another origin: a CSP of C{default-src 'none';
        script-src 'self'; style-src 'self'} lets it work.
        """
        page = Elements(packaged("index.html").decode("utf-8"))
        scripts = [attrs for tag, attrs in page.tags if tag == "script"]
        self.assertEqual(scripts, [{"src": "static/app.js", "defer": None}])
        self.assertEqual([(tag, text) for tag, text in page.inside if text.strip()], [])
        for tag, attrs in page.tags:
            self.assertNotEqual(tag, "style")
            self.assertNotIn("style", attrs, tag)
            self.assertEqual([a for a in attrs if a.startswith("on")], [], tag)
            for link in (attrs.get("src"), attrs.get("href")):
                if link is not None:
                    self.assertNotRegex(link, r"^(?:[a-z]+:)?//", (tag, attrs))
        self.assertIn(("link", {"rel": "stylesheet", "href": "static/app.css"}), page.tags)

    def test_scriptWritesNoMarkup(self):
        """
        The script builds the page with the DOM, never from markup (no C{innerHTML},
        C{outerHTML}, C{insertAdjacentHTML}, C{document.write} or C{eval}), so what the
        server reports (service names, addresses, close reasons) is shown as text; and it
        sets no inline style (colours are classes).
        """
        script = packaged("app.js").decode("utf-8")
        for forbidden in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                          "eval(", "new Function", ".style.", '"style"'):
            self.assertNotIn(forbidden, script)

    def test_stylesheetIsLocal(self):
        """
        The style sheet imports nothing and loads no font or image from elsewhere.
        """
        css = packaged("app.css").decode("utf-8")
        self.assertNotIn("@import", css)
        self.assertEqual(re.findall(r"url\(", css), [])


class ServingTests(SynchronousTestCase):
    """
    The page and its files through the status site.
    """

    def setUp(self):
        server = PortServer(makePlan(spec("echo", port=7)), PortReactor())
        self.site = StatusService(server, "tcp:8790:interface=127.0.0.1").site

    def test_page(self):
        """
        C{GET /} is the page, as HTML; it links every API endpoint (for people who want
        the JSON) and loads its script and style sheet from C{static/}.
        """
        response = fetch(self.site, b"/")
        self.assertEqual((response.code, response.header("content-type")),
                         (200, "text/html; charset=utf-8"))
        self.assertEqual(response.body, packaged("index.html"))
        for href in (b"api/connections", b"api/listeners", b"api/summary", b"api/history",
                     b"metrics"):
            self.assertIn(b'<a href="' + href + b'">', response.body)

    def test_files(self):
        """
        C{GET /static/NAME} serves each file with the content type of its kind and the
        site's C{nosniff}; C{HEAD} gives the same headers and no body.
        """
        for name, contentType in SHIPPED.items():
            response = fetch(self.site, b"/static/" + name.encode())
            self.assertEqual((response.code, response.header("content-type"),
                              response.header("x-content-type-options"), response.body),
                             (200, contentType, "nosniff", packaged(name)), name)
            head = fetch(self.site, b"/static/" + name.encode(), b"HEAD")
            self.assertEqual((head.code, head.header("content-type"),
                              head.header("content-length"), head.body),
                             (200, contentType, str(len(packaged(name))), b""), name)

    def test_unknownFiles(self):
        """
        Only the shipped files are served: other names, the directory itself, paths
        below a file and attempts to climb out are 404s.
        """
        for path in (b"/static/nope.js", b"/static", b"/static/", b"/static/app.js/x",
                     b"/static/../setup.cfg", b"/static/%2e%2e/setup.cfg", b"/index.html",
                     b"/static/__init__.py"):
            self.assertEqual(fetch(self.site, path).code, 404, path)

    def test_otherMethods(self):
        """
        The page and its files answer only GET and HEAD.
        """
        for path in (b"/", b"/static/app.js"):
            response = fetch(self.site, path, b"POST")
            self.assertEqual((response.code, response.header("allow")), (405, "GET, HEAD"))

    def test_givenFiles(self):
        """
        L{pageResources} serves the files it is given (by extension), the page being
        C{index.html}.
        """
        page, static = pageResources({"index.html": b"<p>hi</p>", "x.png": b"\x89PNG"})
        self.assertEqual((page.contentType, page.data), (CONTENT_TYPES[".html"], b"<p>hi</p>"))
        self.assertEqual(sorted(static.files), [b"index.html", b"x.png"])
        png = static.files[b"x.png"]
        self.assertEqual((png.contentType, png.data), ("image/png", b"\x89PNG"))
