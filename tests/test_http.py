"""
Tests for the C{http} protocol (L{portserver.protocols.http}): options, request handling
driven in memory, and a real listener with a real client.
"""

from __future__ import annotations

import os
from email.utils import formatdate
from http.client import HTTPConnection

import attrs
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from portserver.options import OptionsError
from portserver.protocols.http import (
    DEFAULT_INDEX,
    StaticFile,
    StaticSite,
    http,
)
from portserver.registry import CLOSED, Endpoint
from portserver.service import PortServer
from tests.support import makePlan, spec

PROVIDERS = {http.name: http}
CLIENT = IPv4Address("TCP", "203.0.113.7", 40001)
SERVER = IPv4Address("TCP", "192.0.2.1", 80)
CONTENT = b"0123456789abcdefghij"  # a.txt
SECRET = b"TOP SECRET outside the root"
DEADLINE = 10  # seconds a real client may wait, on a loaded CI machine
MTIME = 1_700_000_000  # a.txt's modification time: 2023-11-14 22:13:20 UTC


def makeTree(base: str) -> tuple[str, str]:
    """
    Make under C{base} a served C{root} and, beside it, an C{outside} directory that must
    never be served; return both paths.

        root/a.txt              CONTENT, mtime MTIME
        root/blob.portserver-unknown   an unknown extension
        root/notes.md           for mime_types
        root/withindex/index.html, withindex/other.txt
        root/plain/b.txt        a directory without an index
        root/in-file -> a.txt   symlinks that stay inside
        root/in-dir -> plain
        root/out-file -> ../outside/secret.txt   symlinks that leave
        root/out-dir -> ../outside/secretdir
        root/outindex/index.html -> ../../outside/secret.txt
        outside/secret.txt, outside/secretdir/inner.txt
    """
    root = os.path.join(base, "root")
    outside = os.path.join(base, "outside")
    for directory in (root, outside, os.path.join(outside, "secretdir"),
                      os.path.join(root, "withindex"), os.path.join(root, "plain"),
                      os.path.join(root, "outindex")):
        os.makedirs(directory)

    def write(path, data):
        with open(path, "wb") as f:
            f.write(data)

    write(os.path.join(root, "a.txt"), CONTENT)
    os.utime(os.path.join(root, "a.txt"), (MTIME, MTIME))
    write(os.path.join(root, "blob.portserver-unknown"), b"\x00\x01")
    write(os.path.join(root, "notes.md"), b"# notes\n")
    write(os.path.join(root, "withindex", "index.html"), b"<p>the index</p>")
    write(os.path.join(root, "withindex", "other.txt"), b"other")
    write(os.path.join(root, "plain", "b.txt"), b"bee")
    write(os.path.join(outside, "secret.txt"), SECRET)
    write(os.path.join(outside, "secretdir", "inner.txt"), SECRET)
    os.symlink("a.txt", os.path.join(root, "in-file"))
    os.symlink("plain", os.path.join(root, "in-dir"))
    os.symlink(os.path.join("..", "outside", "secret.txt"), os.path.join(root, "out-file"))
    os.symlink(os.path.join("..", "outside", "secretdir"), os.path.join(root, "out-dir"))
    os.symlink(os.path.join("..", "..", "outside", "secret.txt"),
               os.path.join(root, "outindex", "index.html"))
    return root, outside


def openFiles(name: str) -> list[str]:
    """
    The paths ending in C{name} this process has open (Linux: C{/proc/self/fd}).
    """
    if not os.path.isdir("/proc/self/fd"):
        raise SkipTest("no /proc/self/fd to list open files")
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            path = os.readlink(os.path.join("/proc/self/fd", fd))
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if path.endswith(os.sep + name):
            found.append(path)
    return found


@attrs.frozen
class Response:
    status: int
    headers: dict
    body: bytes


def parseResponse(data: bytes) -> Response:
    """
    The one HTTP response in C{data}; header names lower-cased.
    """
    head, separator, body = data.partition(b"\r\n\r\n")
    assert separator, f"no complete response head in {data!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(status, headers, body)


class PausingTransport(StringTransport):
    """
    A L{StringTransport} whose buffer is "full" beyond C{limit} bytes: past it, each write
    pauses the registered producer, as a TCP transport does.
    """

    limit = 64 * 1024

    def write(self, data):
        super().write(data)
        if self.producer is not None and len(self.value()) > self.limit:
            self.producer.pauseProducing()


class OptionsTests(TestCase):
    """
    The options of C{http}: checked, defaults filled, C{root} made absolute.
    """

    def setUp(self):
        self.root = self.mktemp()  # relative to trial's working directory
        os.makedirs(self.root)

    def problems(self, options):
        """
        The (option, message) pairs of the L{OptionsError} C{options} raise.
        """
        error = self.assertRaises(OptionsError, http.validateOptions, options)
        return [(p.option, p.message) for p in error.problems]

    def test_provider(self):
        """
        The provider is a TCP-only protocol named C{http} on port 80.
        """
        self.assertEqual(http.name, "http")
        self.assertEqual(http.wellKnownPort, 80)
        self.assertEqual(http.transports, frozenset({"tcp"}))
        self.assertNotIn("\n", http.description)

    def test_defaults(self):
        """
        With only C{root}, the index names, listing and MIME types take their defaults,
        and the relative root is stored as an absolute real path.
        """
        options = http.validateOptions({"root": self.root})
        self.assertEqual(options, {
            "root": os.path.realpath(os.path.abspath(self.root)),
            "index": DEFAULT_INDEX, "listing": False, "mime_types": {}})
        self.assertTrue(os.path.isabs(options["root"]))

    def test_rootThroughSymlink(self):
        """
        A root given through a symlink is stored resolved.
        """
        link = self.mktemp()
        os.symlink(os.path.abspath(self.root), link)
        self.assertEqual(http.validateOptions({"root": link})["root"],
                         os.path.realpath(self.root))

    def test_rootRequired(self):
        """
        Without C{root}, validation fails naming C{root}, with the uniform message of a
        required option.
        """
        [(option, message)] = self.problems({})
        self.assertEqual(option, "root")
        self.assertEqual(message, "is required")

    def test_rootMissingDirectory(self):
        """
        A C{root} that does not exist is an error naming C{root} and the path.
        """
        [(option, message)] = self.problems({"root": os.path.join(self.root, "nope")})
        self.assertEqual(option, "root")
        self.assertIn("does not exist", message)
        self.assertIn("nope", message)

    def test_rootNotADirectory(self):
        """
        A C{root} that is a file is an error naming C{root}.
        """
        path = os.path.join(self.root, "file")
        open(path, "w").close()
        [(option, message)] = self.problems({"root": path})
        self.assertEqual(option, "root")
        self.assertIn("is not a directory", message)

    def test_rootWrongType(self):
        """
        A C{root} that is not a string is an error naming C{root}.
        """
        [(option, message)] = self.problems({"root": 42})
        self.assertEqual(option, "root")
        self.assertIn("directory path", message)

    def test_badMimeType(self):
        """
        A MIME type that is not I{type/subtype} is an error naming C{mime_types}.
        """
        [(option, message)] = self.problems(
            {"root": self.root, "mime_types": {".md": "markdown"}})
        self.assertEqual(option, "mime_types")
        self.assertIn("'markdown'", message)

    def test_badExtension(self):
        """
        An extension without its leading dot is an error naming C{mime_types}.
        """
        [(option, message)] = self.problems(
            {"root": self.root, "mime_types": {"md": "text/markdown"}})
        self.assertEqual(option, "mime_types")
        self.assertIn("'md'", message)

    def test_mimeTypesNormalized(self):
        """
        Extensions are stored lower-case (as C{File} looks them up); parameters are
        accepted.
        """
        options = http.validateOptions({"root": self.root, "mime_types": {
            ".MD": "text/markdown; charset=utf-8", ".wasm": "application/wasm"}})
        self.assertEqual(options["mime_types"], {
            ".md": "text/markdown; charset=utf-8", ".wasm": "application/wasm"})

    def test_badIndex(self):
        """
        Index names must be plain file names.
        """
        for bad in (["a/b.html"], [""], [".."], [3]):
            [(option, _)] = self.problems({"root": self.root, "index": bad})
            self.assertEqual(option, "index")

    def test_listingMustBeBool(self):
        """
        C{listing} must be a boolean, not a string that looks like one.
        """
        [(option, _)] = self.problems({"root": self.root, "listing": "yes"})
        self.assertEqual(option, "listing")

    def test_everyProblemReported(self):
        """
        An unknown option, a bad option and the missing root are reported together.
        """
        problems = self.problems({"colour": "red", "listing": 1})
        self.assertEqual(sorted(option for option, _ in problems),
                         ["colour", "listing", "root"])

    def test_validatedOptionsValidateAgain(self):
        """
        Validation is idempotent: what it returned passes again unchanged.
        """
        options = http.validateOptions(
            {"root": self.root, "mime_types": {".MD": "text/x-md"}})
        self.assertEqual(http.validateOptions(options), options)


class MemoryTestsMixin:
    """
    Serve a tree from a factory built with a L{Clock}, and talk to it through in-memory
    transports.
    """

    def setUp(self):
        self.base = self.mktemp()
        self.root, self.outside = makeTree(self.base)
        self.clock = Clock()
        self.events = []
        self.factory = self.build()

    def build(self, **options):
        service = spec("web", "http", port=0, options={"root": self.root, **options},
                       providers=PROVIDERS)
        factory = http.buildFactory(service, self.clock)
        factory.logger = Logger(observer=self.events.append)
        factory.doStart()
        self.addCleanup(factory.doStop)
        return factory

    def connect(self, client=CLIENT, transport=None, factory=None):
        factory = factory or self.factory
        protocol = factory.buildProtocol(client)
        transport = transport or StringTransport(peerAddress=client, hostAddress=SERVER)
        protocol.makeConnection(transport)
        return protocol, transport

    def request(self, target, method="GET", headers=(), factory=None, client=CLIENT):
        """
        Send one request on a fresh connection; return the parsed L{Response}.
        """
        protocol, transport = self.connect(client, factory=factory)
        lines = [f"{method} {target} HTTP/1.1", "Host: example.test"]
        lines += [f"{name}: {value}" for name, value in headers]
        protocol.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        return parseResponse(transport.value())

    def assertNotFound(self, response, head=False):
        """
        C{response} is the plain 404 page (and gives nothing from outside the root away);
        for a HEAD, its headers only.
        """
        self.assertEqual(response.status, 404)
        self.assertEqual(response.headers["content-type"], "text/html; charset=utf-8")
        if head:
            self.assertEqual(response.body, b"")
        else:
            self.assertEqual(int(response.headers["content-length"]), len(response.body))
            self.assertIn(b"404 Not Found", response.body)
        self.assertNotIn(SECRET, response.body)


class RequestTests(MemoryTestsMixin, TestCase):
    """
    Request handling, driven in memory.
    """

    def test_file(self):
        """
        A file is served whole with C{200}, its length, its type and its mtime.
        """
        response = self.request("/a.txt")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, CONTENT)
        self.assertEqual(response.headers["content-length"], str(len(CONTENT)))
        self.assertEqual(response.headers["content-type"], "text/plain")
        self.assertEqual(response.headers["last-modified"], formatdate(MTIME, usegmt=True))
        self.assertEqual(response.headers["accept-ranges"], "bytes")

    def test_largeFileWithoutReactor(self):
        """
        A file of several buffers' worth is sent whole on the in-memory transport, with no
        reactor turn: the body is pushed, not pulled by the global cooperator.
        """
        data = os.urandom(1024 * 1024 + 7)
        with open(os.path.join(self.root, "big.bin"), "wb") as f:
            f.write(data)
        response = self.request("/big.bin")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, data)
        self.assertEqual(response.headers["content-type"], "application/octet-stream")

    def test_backpressure(self):
        """
        A transport whose buffer is full pauses the body; resuming it sends the rest, and
        the request is logged once, when it ends.
        """
        data = os.urandom(512 * 1024)
        with open(os.path.join(self.root, "big.bin"), "wb") as f:
            f.write(data)
        protocol, transport = self.connect(
            transport=PausingTransport(peerAddress=CLIENT, hostAddress=SERVER))
        protocol.dataReceived(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertLess(len(transport.value()), 2 * PausingTransport.limit)
        self.assertEqual(self.events, [])
        rounds = 0
        while not self.events:
            transport.clear()  # the kernel took it
            transport.producer.resumeProducing()  # what a drained TCP buffer does
            rounds += 1
            self.assertLess(rounds, 100)
        self.assertGreater(rounds, 3)
        [event] = self.events
        self.assertEqual((event["status"], event["bytes"], event["aborted"]),
                         (200, len(data), False))

    def test_clientGoneMidBody(self):
        """
        A client that goes away while its body is paused gets one access-log event,
        marked aborted, with the bytes sent so far; the file is closed.
        """
        with open(os.path.join(self.root, "big.bin"), "wb") as f:
            f.write(b"x" * 512 * 1024)
        protocol, transport = self.connect(
            transport=PausingTransport(peerAddress=CLIENT, hostAddress=SERVER))
        protocol.dataReceived(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(len(openFiles("big.bin")), 1)
        protocol.connectionLost(Failure(ConnectionLost()))
        [event] = self.events
        self.assertTrue(event["aborted"])
        self.assertGreater(event["bytes"], 0)
        self.assertLess(event["bytes"], 512 * 1024)
        self.assertIn('"GET /big.bin HTTP/1.1" 200', formatEvent(event))
        self.assertTrue(formatEvent(event).endswith(" aborted"))
        self.assertEqual(openFiles("big.bin"), [])

    def test_readError(self):
        """
        A file that cannot be read when its body is due is logged as a failure and
        answered with a 500 page; the connection stays usable.
        """
        class Broken:
            name = "broken"

            def read(self, size):
                raise OSError(5, "Input/output error")

            def seek(self, offset):
                pass

            def close(self):
                pass

        self.patch(StaticFile, "openForReading", lambda self: Broken())
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /a.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=1-2\r\n\r\n")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        response = parseResponse(transport.value())
        self.assertEqual(response.status, 500)
        self.assertEqual(int(response.headers["content-length"]), len(response.body))
        self.assertNotIn("content-range", response.headers)
        self.assertIn(b"500 Internal Server Error", response.body)
        self.assertFalse(transport.disconnecting)
        [event] = self.events
        self.assertEqual((event["status"], event["aborted"]), (500, False))

    def test_serverHeader(self):
        """
        The C{Server} header says portserver, not Twisted and its version.
        """
        response = self.request("/a.txt")
        self.assertEqual(response.headers["server"], "portserver")
        self.assertEqual(self.request("/missing").headers["server"], "portserver")

    def test_unknownTypeIsOctetStream(self):
        """
        A file of unknown extension is C{application/octet-stream}, not C{File}'s
        default C{text/html}.
        """
        response = self.request("/blob.portserver-unknown")
        self.assertEqual(response.headers["content-type"], "application/octet-stream")

    def test_extraMimeType(self):
        """
        C{mime_types} gives the type of an extension.
        """
        self.assertNotEqual(self.request("/notes.md").headers["content-type"],
                            "text/x-portserver-notes")
        factory = self.build(mime_types={".MD": "text/x-portserver-notes"})
        response = self.request("/notes.md", factory=factory)
        self.assertEqual(response.headers["content-type"], "text/x-portserver-notes")
        self.assertEqual(response.body, b"# notes\n")

    def test_extraMimeTypeNotGlobal(self):
        """
        A service's C{mime_types} do not leak into Twisted's shared table or another
        service.
        """
        self.build(mime_types={".md": "text/x-portserver-notes"})
        from twisted.web.static import File
        self.assertNotEqual(File.contentTypes.get(".md"), "text/x-portserver-notes")
        self.assertNotEqual(self.request("/notes.md").headers["content-type"],
                            "text/x-portserver-notes")

    def test_indexFile(self):
        """
        A directory with an index file serves it.
        """
        response = self.request("/withindex/")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"<p>the index</p>")
        self.assertEqual(response.headers["content-type"], "text/html")

    def test_customIndex(self):
        """
        The C{index} option decides which names are index files.
        """
        factory = self.build(index=["other.txt"])
        self.assertEqual(self.request("/withindex/", factory=factory).body, b"other")

    def test_directoryRedirect(self):
        """
        A directory asked for without its trailing slash is redirected to it.
        """
        response = self.request("/withindex?x=1")
        self.assertEqual(response.status, 302)
        self.assertEqual(response.headers["location"], "/withindex/?x=1")

    def test_listingOff(self):
        """
        Without C{listing}, a directory without index file is a 404, never a listing.
        """
        for target in ("/plain/", "/"):
            response = self.request(target)
            self.assertNotFound(response)
            self.assertNotIn(b"b.txt", response.body)
            self.assertNotIn(b"a.txt", response.body)

    def test_listingOn(self):
        """
        With C{listing: true}, a directory without index is listed, without the entries
        that lead outside the root.
        """
        factory = self.build(listing=True)
        response = self.request("/", factory=factory)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-type"], "text/html; charset=utf-8")
        for name in (b"a.txt", b"plain/", b"in-file", b"in-dir/"):
            self.assertIn(b'href="' + name + b'"', response.body)
        for name in (b"out-file", b"out-dir"):
            self.assertNotIn(name, response.body)
        self.assertIn(b"b.txt", self.request("/plain/", factory=factory).body)

    def test_listingHead(self):
        """
        HEAD of a listing gives its length, and no body.
        """
        factory = self.build(listing=True)
        get = self.request("/plain/", factory=factory)
        head = self.request("/plain/", "HEAD", factory=factory)
        self.assertEqual(head.status, 200)
        self.assertEqual(head.body, b"")
        self.assertEqual(head.headers["content-length"], str(len(get.body)))

    def test_notFound(self):
        """
        A missing file is a small plain HTML 404 page, not a traceback.
        """
        response = self.request("/no/such/file.txt")
        self.assertNotFound(response)
        self.assertNotIn(b"Traceback", response.body)
        self.assertLess(len(response.body), 512)

    def test_childOfAFile(self):
        """
        A path below a file is a 404.
        """
        self.assertNotFound(self.request("/a.txt/more"))

    def test_emptySegments(self):
        """
        Empty segments (C{//}) lead nowhere, listing on or off: the 404 page, not
        Twisted's.
        """
        listing = self.build(listing=True)
        for factory in (self.factory, listing):
            self.assertNotFound(self.request("//a.txt", factory=factory))
            self.assertNotFound(self.request("/plain//b.txt", factory=factory))

    def test_head(self):
        """
        HEAD gives GET's status and headers (the length too), and no body.
        """
        get = self.request("/a.txt")
        head = self.request("/a.txt", "HEAD")
        self.assertEqual(head.status, 200)
        self.assertEqual(head.body, b"")
        self.assertEqual(head.headers["content-length"], get.headers["content-length"])
        self.assertEqual(head.headers["last-modified"], get.headers["last-modified"])

    def test_headNotFound(self):
        """
        HEAD of a missing file is a 404 with the page's length and no body.
        """
        get = self.request("/missing")
        head = self.request("/missing", "HEAD")
        self.assertEqual(head.status, 404)
        self.assertEqual(head.body, b"")
        self.assertEqual(head.headers["content-length"], str(len(get.body)))

    def test_notModified(self):
        """
        C{If-Modified-Since} at or after the file's mtime is a 304 without body; before
        it, the file is sent.
        """
        response = self.request(
            "/a.txt", headers=[("If-Modified-Since", formatdate(MTIME, usegmt=True))])
        self.assertEqual(response.status, 304)
        self.assertEqual(response.body, b"")
        response = self.request(
            "/a.txt", headers=[("If-Modified-Since", formatdate(MTIME - 60, usegmt=True))])
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, CONTENT)

    def test_range(self):
        """
        A satisfiable C{Range} is a 206 with the bytes asked for and C{Content-Range}.
        """
        response = self.request("/a.txt", headers=[("Range", "bytes=5-9")])
        self.assertEqual(response.status, 206)
        self.assertEqual(response.body, b"56789")
        self.assertEqual(response.headers["content-range"], f"bytes 5-9/{len(CONTENT)}")
        self.assertEqual(response.headers["content-length"], "5")
        suffix = self.request("/a.txt", headers=[("Range", "bytes=-3")])
        self.assertEqual((suffix.status, suffix.body), (206, b"hij"))

    def test_multipleRanges(self):
        """
        Several ranges are a 206 C{multipart/byteranges} with each part.
        """
        response = self.request("/a.txt", headers=[("Range", "bytes=0-1,10-11")])
        self.assertEqual(response.status, 206)
        self.assertTrue(response.headers["content-type"].startswith("multipart/byteranges"))
        self.assertEqual(int(response.headers["content-length"]), len(response.body))
        self.assertIn(b"\r\n\r\n01\r\n", response.body)
        self.assertIn(b"\r\n\r\nab\r\n", response.body)

    def test_rangeNotSatisfiable(self):
        """
        A range beyond the end is a 416 naming the length.
        """
        response = self.request("/a.txt", headers=[("Range", "bytes=100-")])
        self.assertEqual(response.status, 416)
        self.assertEqual(response.headers["content-range"], f"bytes */{len(CONTENT)}")
        self.assertEqual(response.body, b"")

    def test_dotDotRefused(self):
        """
        C{..} segments, literal or percent-encoded (C{%2e%2e}, C{%2E%2E}), and encoded
        slashes (C{%2f}) cannot reach outside the root.
        """
        for target in ("/../outside/secret.txt",
                       "/plain/../../outside/secret.txt",
                       "/%2e%2e/outside/secret.txt",
                       "/%2E%2E/outside/secret.txt",
                       "/plain/%2e%2e/%2e%2e/outside/secret.txt",
                       "/..%2foutside%2fsecret.txt",
                       "/%2e%2e%2foutside%2fsecret.txt",
                       "/plain%2f..%2f..%2foutside%2fsecret.txt",
                       "/%2foutside/secret.txt",
                       "/" + os.path.abspath(os.path.join(self.outside, "secret.txt")),
                       "/..", "/../", "/%2e%2e/"):
            self.assertNotFound(self.request(target))

    def test_badSegments(self):
        """
        A NUL or a segment that is not UTF-8 is a 404 (and no error is logged, which
        trial would report).
        """
        self.assertNotFound(self.request("/a.txt%00.png"))
        self.assertNotFound(self.request("/%ff%fe"))

    def test_symlinkToFileOutside(self):
        """
        A symlink inside the root to a file outside it is not followed.
        """
        self.assertNotFound(self.request("/out-file"))
        self.assertNotFound(self.request("/out-file", "HEAD"), head=True)

    def test_symlinkToDirectoryOutside(self):
        """
        A symlink inside the root to a directory outside it is not followed, to its
        files or (listing on) to its listing.
        """
        self.assertNotFound(self.request("/out-dir/inner.txt"))
        self.assertNotFound(self.request("/out-dir"))
        factory = self.build(listing=True)
        response = self.request("/out-dir/", factory=factory)
        self.assertNotFound(response)
        self.assertNotIn(b"inner.txt", response.body)

    def test_indexSymlinkOutside(self):
        """
        An index file that is a symlink leading outside the root is not served.
        """
        self.assertNotFound(self.request("/outindex/"))

    def test_symlinkInside(self):
        """
        Symlinks whose targets are inside the root are served.
        """
        response = self.request("/in-file")
        self.assertEqual((response.status, response.body), (200, CONTENT))
        self.assertEqual(self.request("/in-dir/b.txt").body, b"bee")

    def test_notRegularFile(self):
        """
        A FIFO inside the root is a 404: opening it would block the server.
        """
        if not hasattr(os, "mkfifo"):
            self.skipTest("no FIFOs here")
        os.mkfifo(os.path.join(self.root, "pipe"))
        self.assertNotFound(self.request("/pipe"))

    def test_methodNotAllowed(self):
        """
        Methods other than GET and HEAD are a 405 naming the allowed ones, whatever the
        path.
        """
        for method, target in (("POST", "/a.txt"), ("PUT", "/new.txt"),
                               ("DELETE", "/missing"), ("OPTIONS", "/"),
                               ("POST", "/../outside/secret.txt")):
            response = self.request(target, method,
                                    headers=[("Content-Length", "0")])
            self.assertEqual(response.status, 405, (method, target))
            self.assertEqual(response.headers["allow"], "GET, HEAD")
            self.assertIn(b"405 Method Not Allowed", response.body)
        self.assertFalse(os.path.exists(os.path.join(self.root, "new.txt")))

    def test_accessLog(self):
        """
        Each request gives exactly one access-log event, with the client's ip and port,
        the request line, the status and the bytes sent, and the service name.
        """
        self.request("/a.txt")
        self.request("/missing", "HEAD")
        first, second = self.events
        self.assertEqual(formatEvent(first),
                         f'web 203.0.113.7:40001 "GET /a.txt HTTP/1.1" 200 {len(CONTENT)}')
        self.assertEqual(
            {key: first[key] for key in ("service", "client_ip", "client_port", "method",
                                         "path", "status", "bytes", "aborted")},
            {"service": "web", "client_ip": "203.0.113.7", "client_port": 40001,
             "method": "GET", "path": "/a.txt", "status": 200, "bytes": len(CONTENT),
             "aborted": False})
        self.assertEqual(formatEvent(second),
                         'web 203.0.113.7:40001 "HEAD /missing HTTP/1.1" 404 0')

    def test_accessLogIPv6(self):
        """
        An IPv6 client is logged as C{[ip]:port}; an IPv4-mapped one as IPv4.
        """
        self.request("/a.txt", client=IPv6Address("TCP", "2001:db8::7", 40002))
        self.request("/a.txt", client=IPv6Address("TCP", "::ffff:198.51.100.9", 40003))
        first, second = self.events
        self.assertTrue(formatEvent(first).startswith('web [2001:db8::7]:40002 "GET'))
        self.assertEqual(first["client_ip"], "2001:db8::7")
        self.assertTrue(formatEvent(second).startswith('web 198.51.100.9:40003 "GET'))

    def test_accessLogEscapes(self):
        """
        Quotes, backslashes and other unprintable bytes of the path are escaped in the
        log, so a line cannot be forged.
        """
        self.request('/"a\\b\x7f')  # what the request parser lets through
        [event] = self.events
        self.assertIn(r'"GET /\x22a\x5cb\x7f HTTP/1.1" 404', formatEvent(event))

    def test_keepAlive(self):
        """
        Two requests on one connection are answered and logged one each.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol.dataReceived(b"GET /in-file HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(transport.value().count(CONTENT), 2)
        self.assertEqual([e["path"] for e in self.events], ["/a.txt", "/in-file"])

    def test_quietFactory(self):
        """
        Starting and stopping the site logs nothing (not "Starting factory"), and it
        writes no access-log file of its own.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        site = self.build()
        site.doStop()
        site.doStart()
        self.assertFalse(site.noisy)
        self.assertIsInstance(site, StaticSite)
        self.assertEqual(events, [])
        self.assertIsNone(site._logFile)

    def test_clock(self):
        """
        The site runs on the reactor it is given: an idle connection is timed out by the
        test's clock, and nothing else is left scheduled on it.
        """
        self.assertIs(self.factory.reactor, self.clock)
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertFalse(transport.disconnecting)
        self.clock.advance(self.factory.timeOut + 1)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.clock.getDelayedCalls(), [])


def fetch(port: int, method: str, target: str, headers=None):
    """
    Make one request with C{http.client} (blocking: run it in a thread); return the
    L{Response} and the client socket's address.
    """
    connection = HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
    try:
        connection.request(method, target, headers=headers or {})
        sockname = connection.sock.getsockname()
        response = connection.getresponse()
        body = response.read()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return Response(response.status, headers, body), sockname
    finally:
        connection.close()


class IntegrationTests(TestCase):
    """
    A real C{http} service through L{PortServer} on 127.0.0.1, port 0, and a real client
    (C{http.client} in a thread, so that the reactor runs while it waits).
    """

    timeout = 60

    def setUp(self):
        self.root, self.outside = makeTree(self.mktemp())
        self.server = PortServer(makePlan(spec(
            "web", "http", port=0, options={"root": self.root}, providers=PROVIDERS)),
            reactor)
        self.server.startService()
        self.addCleanup(self.server.stopService)
        self.port = self.server.addressOf("web", "tcp").port
        self.events = []
        globalLogPublisher.addObserver(self.observe)
        self.addCleanup(globalLogPublisher.removeObserver, self.observe)

    def observe(self, event):
        if event.get("service") == "web" and "status" in event:
            self.events.append(event)

    @inlineCallbacks
    def fetch(self, method, target, headers=None):
        """
        The L{Response} to one request, and the client's address, once the server has
        seen the connection close (so no connection outlives the test).
        """
        response, sockname = yield deferToThread(fetch, self.port, method, target, headers)
        end = reactor.seconds() + DEADLINE
        while self.server.registry.select(service="web"):
            if reactor.seconds() > end:
                self.fail(f"the server did not see the close within {DEADLINE}s")
            yield deferLater(reactor, 0.01, lambda: None)
        return response, sockname

    @inlineCallbacks
    def test_get(self):
        """
        GET serves the file with its length, and logs the client's real port.
        """
        response, sockname = yield self.fetch("GET", "/a.txt")
        self.assertEqual((response.status, response.body), (200, CONTENT))
        self.assertEqual(response.headers["content-length"], str(len(CONTENT)))
        self.assertEqual(response.headers["server"], "portserver")
        [event] = self.events
        self.assertEqual((event["client_ip"], event["client_port"]), sockname)
        self.assertEqual(formatEvent(event),
                         f'web {sockname[0]}:{sockname[1]} "GET /a.txt HTTP/1.1" 200 20')

    @inlineCallbacks
    def test_head(self):
        """
        HEAD gives the length and no body.
        """
        response, _ = yield self.fetch("HEAD", "/a.txt")
        self.assertEqual((response.status, response.body), (200, b""))
        self.assertEqual(response.headers["content-length"], str(len(CONTENT)))

    @inlineCallbacks
    def test_range(self):
        """
        A range request is a 206 with the bytes asked for.
        """
        response, _ = yield self.fetch("GET", "/a.txt", {"Range": "bytes=10-"})
        self.assertEqual((response.status, response.body), (206, b"abcdefghij"))
        self.assertEqual(response.headers["content-range"], f"bytes 10-19/{len(CONTENT)}")

    @inlineCallbacks
    def test_largeFile(self):
        """
        A file far larger than the socket buffers arrives whole (the pushed body is paced
        by the real transport).
        """
        data = os.urandom(8 * 1024 * 1024)
        with open(os.path.join(self.root, "big.bin"), "wb") as f:
            f.write(data)
        response, _ = yield self.fetch("GET", "/big.bin")
        self.assertEqual(response.status, 200)
        self.assertEqual(len(response.body), len(data))
        self.assertTrue(response.body == data)

    @inlineCallbacks
    def test_notFound(self):
        """
        A missing file is the 404 page.
        """
        response, _ = yield self.fetch("GET", "/nope.html")
        self.assertEqual(response.status, 404)
        self.assertIn(b"404 Not Found", response.body)

    @inlineCallbacks
    def test_escapes(self):
        """
        Raw C{..}, C{%2e%2e} and C{%2f} paths sent as is, and symlinks leading out, get a
        404 and nothing from outside the root.
        """
        for target in ("/../outside/secret.txt", "/%2e%2e/outside/secret.txt",
                       "/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
                       "/../../../../../../etc/passwd",
                       "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                       "/out-file", "/out-dir/inner.txt"):
            response, _ = yield self.fetch("GET", target)
            self.assertEqual(response.status, 404, target)
            self.assertNotIn(SECRET, response.body)
            self.assertNotIn(b"root:", response.body)

    @inlineCallbacks
    def test_methodNotAllowed(self):
        """
        POST is a 405.
        """
        response, _ = yield self.fetch("POST", "/a.txt")
        self.assertEqual(response.status, 405)
        self.assertEqual(response.headers["allow"], "GET, HEAD")

    @inlineCallbacks
    def test_registry(self):
        """
        The registry recorded the connection, under the service and protocol, with the
        client's ip and port as the client's socket saw them.
        """
        _, sockname = yield self.fetch("GET", "/a.txt")
        records = [r for r in self.server.registry.select(service="web", state=CLOSED)
                   if r.remote == Endpoint(*sockname)]
        [record] = records
        self.assertEqual(record.protocol, "http")
        self.assertEqual(record.local, Endpoint("127.0.0.1", self.port))
        self.assertGreater(record.bytesOut, len(CONTENT))
        self.assertGreater(record.bytesIn, 0)
