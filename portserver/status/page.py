"""
The status page for people: static files shipped in the package, served as they are.

    GET /                the page (C{static/index.html})
    GET /static/NAME     one of the files of C{portserver/status/static/}

The page is hand-written HTML, CSS and JavaScript with no inline script or style (so a
strict Content-Security-Policy can forbid both) and nothing from another origin: the
script polls the JSON API (C{/api/summary}, C{/api/listeners}, C{/api/connections},
C{/api/history}) once a second and draws what it gets.

The files are read once, when the resources are made, through L{importlib.resources}
(they are installed as package data of C{portserver.status}); only the names found there
are served, so no request path reaches the file system. Each is a L{Page} of the status
site: GET and HEAD, 405 for other methods, 404 for paths below a file, and the site's
headers.
"""

from __future__ import annotations

from importlib import resources
from posixpath import splitext

from twisted.web.resource import Resource

from portserver.status.web import NotFound, Page

# Content types by extension; a file of any other kind in static/ is not served.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

INDEX = "index.html"


def staticFiles() -> dict[str, bytes]:
    """
    The servable files of the package's C{static/} directory: name -> content.
    """
    directory = resources.files("portserver.status").joinpath("static")
    return {entry.name: entry.read_bytes() for entry in directory.iterdir()
            if entry.is_file() and splitext(entry.name)[1] in CONTENT_TYPES}


class StaticFile(Page):
    """
    One file's C{content}, with the content type its extension says. It holds no data
    of the server's, so it never waits for a server's C{refresh}.
    """

    refreshes = False

    def __init__(self, name: str, content: bytes):
        super().__init__()
        self.name = name
        self.data = content
        self.contentType = CONTENT_TYPES[splitext(name)[1]]

    def content(self, request) -> bytes:
        return self.data


class StaticDirectory(Resource):
    """
    C{/static/}: the files by name; anything else, and the directory itself, is a 404.
    """

    def __init__(self, files: dict[str, bytes]):
        super().__init__()
        self.files = {name.encode("utf-8"): StaticFile(name, content)
                      for name, content in files.items()}

    def getChild(self, path, request):
        return self.files.get(path) or NotFound()

    def render(self, request):
        return NotFound().render(request)


def pageResources(files: dict[str, bytes] | None = None) -> tuple[StaticFile, StaticDirectory]:
    """
    The page (for C{/}) and the static directory (for C{/static}), from C{files}
    (default: L{staticFiles}).
    """
    files = staticFiles() if files is None else files
    return StaticFile(INDEX, files[INDEX]), StaticDirectory(files)
