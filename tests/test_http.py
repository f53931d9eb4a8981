"""
Tests for the C{http} protocol (L{portserver.protocols.http}): options, request handling
driven in memory, and a real listener with a real client.
"""

from __future__ import annotations

import os
import socket
import struct
from email.utils import formatdate
from http.client import HTTPConnection

import attrs
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from portserver.options import OptionsError
from portserver.protocols import http as http_module
from portserver.protocols.http import (
    DEFAULT_INDEX,
    StaticFile,
    StaticRequest,
    StaticSite,
    http,
)
from portserver.registry import CLOSED, Endpoint, Registry
from portserver.server import PortServer
from portserver.testing import MemoryTransport, serviceSpec
from portserver.tracking import TrackingFactory
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


class PausingTransport(MemoryTransport):
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
            "index": DEFAULT_INDEX, "listing": False, "mime_types": {},
            "header_timeout": 30, "max_uri_length": 8192, "max_header_bytes": 16384})
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
        self.clock.advance(MTIME + 86400)  # "now": a day after a.txt's mtime
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

    def test_smallFileReadError(self):
        """
        A small file asked for whole that cannot be read is logged as a failure and
        answered with a 500 page; the connection stays usable.
        """
        class Broken:
            name = "broken"

            def read(self, size):
                raise OSError(5, "Input/output error")

            def fileno(self):
                raise ValueError("not a real file")

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        self.patch(StaticFile, "openForReading", lambda self: Broken())
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        response = parseResponse(transport.value())
        self.assertEqual(response.status, 500)
        self.assertIn(b"500 Internal Server Error", response.body)
        self.assertFalse(transport.disconnecting)

    def test_smallFileWithoutProducer(self):
        """
        A small file asked for whole is read at once and returned as the body: no
        producer stands between the file and the request (the head and the body are
        two writes in the same call, which portserver's transport sends as one); its
        file is closed.
        """
        protocol, transport = self.connect()
        registered = []
        self.patch(StaticRequest, "registerProducer",
                   lambda request, producer, streaming: registered.append(producer))
        protocol.dataReceived(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(registered, [])
        self.assertEqual(parseResponse(transport.value()).body, CONTENT)
        self.assertEqual(openFiles("a.txt"), [])

    def test_cachedChildReplacedBySymlink(self):
        """
        A file served once (its resource kept for the next request) and then replaced
        by a symlink that leaves the root is a 404: every request looks at the path
        again; one removed is a 404 too.
        """
        self.assertEqual(self.request("/a.txt").body, CONTENT)
        path = os.path.join(self.root, "a.txt")
        os.remove(path)
        self.assertNotFound(self.request("/a.txt"))
        os.symlink(os.path.join(self.outside, "secret.txt"), path)
        self.assertNotFound(self.request("/a.txt"))

    def test_cachedChildrenBounded(self):
        """
        The resources kept for served paths are bounded: past the limit the cache
        starts again.
        """
        self.patch(http_module, "MAX_CACHED_CHILDREN", 2)
        for target in ("/a.txt", "/notes.md", "/plain/b.txt"):
            self.assertEqual(self.request(target).status, 200)
        self.assertLessEqual(len(self.factory.resource.children), 2)

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
        self.clock.advance(self.factory.headerTimeout)
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


# -- timeouts and RFC 9110/9112 conformance (issues 14 §2, 15 §3) --------------------


def etagOf(response: Response) -> str:
    """
    The C{ETag} of C{response}, checked to be a strong one (a quoted string, no C{W/}).
    """
    tag = response.headers["etag"]
    assert tag.startswith('"') and tag.endswith('"') and len(tag) > 2, tag
    return tag


class DefaultLimitsTests(TestCase):
    """
    The safe defaults of C{http}: an idle timeout and a request-head timeout without any
    configuration, and the request-head limits as options.
    """

    def setUp(self):
        self.root = self.mktemp()
        os.makedirs(self.root)

    def test_idleTimeoutByDefault(self):
        """
        A service configured with nothing but its root gets an idle timeout of a few
        minutes at most; its own C{limits:} still override it.
        """
        limits = serviceSpec(http, {"root": self.root}).limits
        self.assertIsNotNone(limits.idleTimeout)
        self.assertLessEqual(limits.idleTimeout, 300)
        self.assertEqual(serviceSpec(http, {"root": self.root},
                                     limits={"idle_timeout": 7}).limits.idleTimeout, 7)

    def test_headOptionsDefaults(self):
        """
        C{header_timeout} is 30 s or less by default; C{max_uri_length} and
        C{max_header_bytes} have bounded defaults.
        """
        options = http.validateOptions({"root": self.root})
        self.assertLessEqual(options["header_timeout"], 30)
        self.assertGreater(options["header_timeout"], 0)
        self.assertEqual(options["max_uri_length"], 8192)
        self.assertEqual(options["max_header_bytes"], 16384)

    def test_headOptionsChecked(self):
        """
        A timeout or a limit that is not positive is an error naming the option.
        """
        for name, value in (("header_timeout", 0), ("header_timeout", -1),
                            ("max_uri_length", 0), ("max_header_bytes", -5),
                            ("max_uri_length", 1.5)):
            error = self.assertRaises(OptionsError, http.validateOptions,
                                      {"root": self.root, name: value})
            self.assertEqual([p.option for p in error.problems], [name], (name, value))

    def test_idleTimeoutCutsStalledResponse(self):
        """
        Through the tracking layer (on a clock), a response whose client reads nothing
        (its transport stays paused) is closed "idle-timeout" once the default idle
        timeout has passed without progress; bytes the peer takes move it on.
        """
        root, _ = makeTree(self.mktemp())
        with open(os.path.join(root, "big.bin"), "wb") as f:
            f.write(b"x" * 1024 * 1024)
        clock = Clock()
        service = serviceSpec(http, {"root": root})
        idle = service.limits.idleTimeout
        factory = TrackingFactory(http.buildFactory(service, clock), Registry(clock),
                                  "web", "http", limits=service.limits, clock=clock)
        protocol = factory.buildProtocol(CLIENT)
        transport = PausingTransport(peerAddress=CLIENT, hostAddress=SERVER)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        clock.advance(idle - 1)
        self.assertFalse(transport.disconnecting)
        transport.clear()  # the peer took what was buffered: progress
        transport.producer.resumeProducing()
        clock.advance(idle - 1)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(protocol.closer, "idle-timeout")


class HeadTimeoutTests(MemoryTestsMixin, TestCase):
    """
    C{header_timeout}: the whole request head must arrive within it, counted from the
    connection or from the end of the previous response.
    """

    def test_trickledHead(self):
        """
        A client that trickles its request head, a byte every few seconds, gets a 408
        and is closed when C{header_timeout} has passed since the connection was made,
        however recently it sent a byte; the 408 is in the access log.
        """
        protocol, transport = self.connect()
        head = b"GET /a.txt HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        for byte in head[:29]:
            protocol.dataReceived(bytes([byte]))
            self.clock.advance(1)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(head[29:30])
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        response = parseResponse(transport.value())
        self.assertEqual(response.status, 408)
        self.assertEqual(response.headers["connection"], "close")
        self.assertEqual(int(response.headers["content-length"]), len(response.body))
        [event] = self.events
        self.assertEqual(event["status"], 408)

    def test_idleKeepAlive(self):
        """
        After a response, a kept-alive connection that sends nothing more is closed
        C{header_timeout} after the end of that response, without a 408.
        """
        protocol, transport = self.connect()
        self.clock.advance(25)
        protocol.dataReceived(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        sent = transport.value()
        self.clock.advance(29)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), sent)
        self.assertEqual([e["status"] for e in self.events], [200])

    def test_configured(self):
        """
        A configured C{header_timeout} is the one applied.
        """
        factory = self.build(header_timeout=2)
        protocol, transport = self.connect(factory=factory)
        protocol.dataReceived(b"GET /a.txt HTTP/1.1\r\n")
        self.clock.advance(1.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_notDuringResponse(self):
        """
        A response that is being sent (here paused by a full transport buffer) is not
        cut by the head timeout: that is the idle timeout's business.
        """
        with open(os.path.join(self.root, "big.bin"), "wb") as f:
            f.write(b"x" * 512 * 1024)
        protocol, transport = self.connect(
            transport=PausingTransport(peerAddress=CLIENT, hostAddress=SERVER))
        protocol.dataReceived(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(600)
        self.assertFalse(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RangeTests(MemoryTestsMixin, TestCase):
    """
    C{Range} (RFC 9110 §14): overlapping and adjacent ranges coalesced, their number
    capped, and never more bytes than the whole file.
    """

    def setUp(self):
        super().setUp()
        self.data = bytes(range(256)) * 4  # 1024 bytes
        with open(os.path.join(self.root, "k.bin"), "wb") as f:
            f.write(self.data)

    def test_repeatedWholeRanges(self):
        """
        C{bytes=0-,0-,...} 200 times is answered 200 with the file once, not 200 copies
        of it.
        """
        response = self.request("/k.bin", headers=[("Range", "bytes=" + ",".join(
            ["0-"] * 200))])
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, self.data)
        self.assertEqual(response.headers["content-length"], str(len(self.data)))
        self.assertNotIn("content-range", response.headers)

    def test_moreThanTheFile(self):
        """
        Ranges that overlap so much that they add up to more than the file are a 200
        with the whole file (as nginx does).
        """
        response = self.request("/k.bin", headers=[("Range", "bytes=0-700,300-1023")])
        self.assertEqual((response.status, response.body), (200, self.data))

    def test_overlappingCoalesced(self):
        """
        Overlapping and adjacent ranges become one part each: C{0-9,5-19,20-29} is one
        range, 0-29, sent as a single-part 206.
        """
        response = self.request("/k.bin", headers=[("Range", "bytes=0-9,5-19,20-29")])
        self.assertEqual(response.status, 206)
        self.assertEqual(response.body, self.data[:30])
        self.assertEqual(response.headers["content-range"], "bytes 0-29/1024")

    def test_disjointKept(self):
        """
        Disjoint ranges stay a multipart 206, the overlapping ones among them merged,
        in order of offset.
        """
        response = self.request("/k.bin",
                                headers=[("Range", "bytes=100-109,0-3,2-5,200-201")])
        self.assertEqual(response.status, 206)
        self.assertEqual(int(response.headers["content-length"]), len(response.body))
        ranges = [line for line in response.body.split(b"\r\n")
                  if line.lower().startswith(b"content-range")]
        self.assertEqual(ranges, [b"Content-range: bytes 0-5/1024",
                                  b"Content-range: bytes 100-109/1024",
                                  b"Content-range: bytes 200-201/1024"])

    def test_tooManyRanges(self):
        """
        More than 100 ranges, even small disjoint ones, are a 200 with the whole file.
        """
        spec = ",".join(f"{i * 3}-{i * 3}" for i in range(101))
        response = self.request("/k.bin", headers=[("Range", "bytes=" + spec)])
        self.assertEqual((response.status, response.body), (200, self.data))
        spec = ",".join(f"{i * 3}-{i * 3}" for i in range(100))
        self.assertEqual(self.request("/k.bin", headers=[("Range", "bytes=" + spec)])
                         .status, 206)

    def test_suffixLongerThanFile(self):
        """
        A suffix range longer than the file is the whole file, as a 206 (RFC 9110
        §14.1.2), not a failed seek.
        """
        response = self.request("/a.txt", headers=[("Range", "bytes=-100")])
        self.assertEqual(response.status, 206)
        self.assertEqual(response.body, CONTENT)
        self.assertEqual(response.headers["content-range"], f"bytes 0-19/{len(CONTENT)}")

    def test_unsatisfiableAmongSatisfiable(self):
        """
        Unsatisfiable ranges are left out; if none is left, a 416.
        """
        response = self.request("/a.txt", headers=[("Range", "bytes=100-200,0-1")])
        self.assertEqual((response.status, response.body), (206, b"01"))
        response = self.request("/a.txt", headers=[("Range", "bytes=100-200,50-")])
        self.assertEqual(response.status, 416)


class ValidatorTests(MemoryTestsMixin, TestCase):
    """
    C{ETag}, C{If-None-Match}, C{If-Modified-Since} and C{If-Range} (RFC 9110 §8.8, §13).
    """

    def test_strongETag(self):
        """
        A file is served with a strong C{ETag}, the same on each request, another once
        the file changed.
        """
        first = etagOf(self.request("/a.txt"))
        self.assertEqual(etagOf(self.request("/a.txt")), first)
        path = os.path.join(self.root, "a.txt")
        with open(path, "wb") as f:
            f.write(CONTENT.upper())
        os.utime(path, (MTIME + 5, MTIME + 5))
        self.assertNotEqual(etagOf(self.request("/a.txt")), first)

    def test_ifNoneMatch(self):
        """
        C{If-None-Match} with the file's tag (among others, or weak, or C{*}) is a 304
        with the tag; with other tags only, a 200.
        """
        tag = etagOf(self.request("/a.txt"))
        for value in (tag, f'"x", {tag}', f"W/{tag}", "*"):
            response = self.request("/a.txt", headers=[("If-None-Match", value)])
            self.assertEqual(response.status, 304, value)
            self.assertEqual(response.body, b"")
            self.assertEqual(response.headers["etag"], tag)
        response = self.request("/a.txt", headers=[("If-None-Match", '"other"')])
        self.assertEqual((response.status, response.body), (200, CONTENT))

    def test_ifNoneMatchBeforeIfModifiedSince(self):
        """
        When C{If-None-Match} is sent, C{If-Modified-Since} is ignored (RFC 9110
        §13.1.3): a tag that does not match is a 200 whatever the date says.
        """
        response = self.request("/a.txt", headers=[
            ("If-None-Match", '"other"'),
            ("If-Modified-Since", formatdate(MTIME, usegmt=True))])
        self.assertEqual(response.status, 200)

    def test_notModifiedWithoutContentLength(self):
        """
        A 304 carries no C{Content-Length: 0} (RFC 9110 §8.6: it would be the length of
        the 200 it stands for).
        """
        response = self.request(
            "/a.txt", headers=[("If-Modified-Since", formatdate(MTIME, usegmt=True))])
        self.assertEqual(response.status, 304)
        self.assertNotIn("content-length", response.headers)

    def test_futureIfModifiedSince(self):
        """
        An C{If-Modified-Since} later than the server's clock is ignored (RFC 9110
        §13.1.3): a 200.
        """
        future = formatdate(self.clock.seconds() + 3600, usegmt=True)
        response = self.request("/a.txt", headers=[("If-Modified-Since", future)])
        self.assertEqual((response.status, response.body), (200, CONTENT))

    def test_ifRangeETag(self):
        """
        C{If-Range} with the current tag gives the range; with another tag (a changed
        file) or a weak one, the whole file with 200.
        """
        tag = etagOf(self.request("/a.txt"))
        response = self.request("/a.txt", headers=[("Range", "bytes=5-9"),
                                                   ("If-Range", tag)])
        self.assertEqual((response.status, response.body), (206, b"56789"))
        for other in ('"stale"', f"W/{tag}"):
            response = self.request("/a.txt", headers=[("Range", "bytes=5-9"),
                                                       ("If-Range", other)])
            self.assertEqual((response.status, response.body), (200, CONTENT), other)

    def test_ifRangeDate(self):
        """
        C{If-Range} with the file's C{Last-Modified} date gives the range; with any
        other date, the whole file with 200.
        """
        response = self.request("/a.txt", headers=[
            ("Range", "bytes=5-9"), ("If-Range", formatdate(MTIME, usegmt=True))])
        self.assertEqual((response.status, response.body), (206, b"56789"))
        for when in (MTIME - 60, MTIME + 60):
            response = self.request("/a.txt", headers=[
                ("Range", "bytes=5-9"), ("If-Range", formatdate(when, usegmt=True))])
            self.assertEqual((response.status, response.body), (200, CONTENT), when)


class RequestCheckTests(MemoryTestsMixin, TestCase):
    """
    The request head checks of RFC 9112: C{Host}, absolute-form, and the size limits,
    each answered with its status and logged, not a silent close.
    """

    def raw(self, data: bytes, factory=None):
        """
        Send C{data} on a fresh connection; return the parsed response and the transport.
        """
        protocol, transport = self.connect(factory=factory)
        protocol.dataReceived(data)
        return parseResponse(transport.value()), transport

    def assertRefused(self, data, status, factory=None):
        """
        C{data} is answered C{status} with a small page and the connection is closed,
        and the refusal is in the access log.
        """
        response, transport = self.raw(data, factory)
        self.assertEqual(response.status, status)
        self.assertEqual(int(response.headers["content-length"]), len(response.body))
        self.assertIn(str(status).encode(), response.body)
        self.assertEqual(response.headers["connection"], "close")
        self.assertTrue(transport.disconnecting)
        self.assertEqual([e["status"] for e in self.events][-1:], [status])
        return response

    def test_http11WithoutHost(self):
        """
        An HTTP/1.1 request without C{Host} is a 400 (RFC 9112 §3.2); HTTP/1.0 needs none.
        """
        self.assertRefused(b"GET /a.txt HTTP/1.1\r\n\r\n", 400)
        response, _ = self.raw(b"GET /a.txt HTTP/1.0\r\n\r\n")
        self.assertEqual((response.status, response.body), (200, CONTENT))

    def test_twoHosts(self):
        """
        Two C{Host} headers are a 400.
        """
        self.assertRefused(b"GET /a.txt HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400)

    def test_absoluteForm(self):
        """
        A request target in absolute-form (C{GET http://host/file}) is served as its
        path; the log shows the target as sent.
        """
        response, _ = self.raw(b"GET http://example.test/a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual((response.status, response.body), (200, CONTENT))
        response, _ = self.raw(b"GET http://example.test HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(response.status, 404)  # the root: no index, no listing
        self.assertEqual(self.events[0]["path"], "http://example.test/a.txt")

    def test_uriTooLong(self):
        """
        A request target longer than C{max_uri_length} is a 414, whether its line has
        ended or is still coming.
        """
        self.assertRefused(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414)
        self.assertRefused(b"GET /" + b"a" * 20000, 414)
        factory = self.build(max_uri_length=100)
        self.assertRefused(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414,
                           factory)

    def test_headersTooLarge(self):
        """
        Header fields adding up to more than C{max_header_bytes}, or one longer than
        it, are a 431.
        """
        many = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(200))
        self.assertRefused(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n", 431)
        self.assertRefused(b"GET /a.txt HTTP/1.1\r\nHost: x\r\nX: " + b"v" * 20000, 431)
        factory = self.build(max_header_bytes=100)
        self.assertRefused(b"GET /a.txt HTTP/1.1\r\nHost: x\r\nX: " + b"v" * 100
                           + b"\r\n\r\n", 431, factory)

    def test_malformedLogged(self):
        """
        A malformed request line or header is a 400 with a page, and logged.
        """
        self.assertRefused(b"NONSENSE\r\n\r\n", 400)
        self.assertRefused(b"GET /a.txt HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n", 400)

    def test_http10KeepAlive(self):
        """
        An HTTP/1.0 request with C{Connection: keep-alive} keeps the connection open,
        says so, and the next request on it is answered.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /a.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        self.assertFalse(transport.disconnecting)
        response = parseResponse(transport.value())
        self.assertEqual(response.headers["connection"], "keep-alive")
        transport.clear()
        protocol.dataReceived(b"GET /in-file HTTP/1.0\r\n\r\n")
        self.assertEqual(parseResponse(transport.value()).body, CONTENT)
        self.assertTrue(transport.disconnecting)

    def test_connectionCloseToken(self):
        """
        C{close} among other C{Connection} tokens, comma-separated, ends the connection.
        """
        response, transport = self.raw(
            b"GET /a.txt HTTP/1.1\r\nHost: x\r\nConnection: TE,close\r\n\r\n")
        self.assertEqual(response.status, 200)
        self.assertTrue(transport.disconnecting)

    def test_halfCloseInMemory(self):
        """
        A client that half-closes after its request still gets the whole response, then
        the connection is closed.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        IHalfCloseableProtocol(protocol).readConnectionLost()
        self.assertEqual(parseResponse(transport.value()).body, CONTENT)
        self.assertTrue(transport.disconnecting)


def exchange(port: int, data: bytes, halfClose: bool = True) -> bytes:
    """
    Send C{data} on a new connection to 127.0.0.1:C{port}, half-close it if asked, and
    return all that comes back until the server closes (blocking: run it in a thread).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
        s.sendall(data)
        if halfClose:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def headOf(port: int, data: bytes) -> Response:
    """
    Send C{data}, read the response head only, then reset the connection (an aborted
    download); blocking.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
        s.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = s.recv(4096)
            if not chunk:
                break
            received += chunk
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return parseResponse(received.partition(b"\r\n\r\n")[0] + b"\r\n\r\n")


class WireTests(TestCase):
    """
    A real C{http} service on 127.0.0.1 driven with raw sockets, as C{nc}, C{curl} and
    a client that never reads drive it.
    """

    timeout = 60

    def setUp(self):
        self.root, _ = makeTree(self.mktemp())
        self.failures = []
        globalLogPublisher.addObserver(self.observe)
        self.addCleanup(globalLogPublisher.removeObserver, self.observe)

    def observe(self, event):
        if "log_failure" in event:
            self.failures.append(event)

    def serve(self, limits=None, **options):
        """
        Start the service with C{options} and C{limits}; return its port.
        """
        service = serviceSpec(http, {"root": self.root, **options}, name="web",
                              limits=limits)
        self.server = PortServer(makePlan(attrs.evolve(service, port=0)), reactor)
        self.server.startService()
        self.addCleanup(self.server.stopService)
        return self.server.addressOf("web", "tcp").port

    def bigFile(self, size: int) -> str:
        """
        A sparse file of C{size} bytes in the root (cheap to make and to read); its name.
        """
        with open(os.path.join(self.root, "big.bin"), "wb") as f:
            f.truncate(size)
        return "big.bin"

    @inlineCallbacks
    def closedRecords(self, count=1):
        """
        The service's closed records, once C{count} connections have closed.
        """
        end = reactor.seconds() + DEADLINE
        while len(self.server.registry.select(service="web", state=CLOSED)) < count:
            if reactor.seconds() > end:
                self.fail(f"no close within {DEADLINE}s")
            yield deferLater(reactor, 0.01, lambda: None)
        return self.server.registry.select(service="web", state=CLOSED)

    @inlineCallbacks
    def test_halfClose(self):
        """
        C{printf 'GET /f HTTP/1.1...' | nc -N}: a client that half-closes after its
        request gets the whole response, here a file larger than the socket buffers.
        """
        port = self.serve()
        name = self.bigFile(4 * 1024 * 1024)
        data = yield deferToThread(exchange, port,
                                   f"GET /{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response = parseResponse(data)
        self.assertEqual(response.status, 200)
        self.assertEqual(len(response.body), 4 * 1024 * 1024)
        data = yield deferToThread(exchange, port,
                                   b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n"
                                   b"GET /in-file HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(data.count(CONTENT), 2)
        yield self.closedRecords(2)
        self.assertEqual(self.failures, [])

    @inlineCallbacks
    def test_stalledReaderClosed(self):
        """
        A client that asks for a large file and never reads is closed once the idle
        timeout has passed with no progress (our writes into a full buffer are not
        progress), and the file is closed; nothing is logged as a failure.
        """
        port = self.serve(limits={"idle_timeout": 0.5, "close_grace": 0.5})
        name = self.bigFile(64 * 1024 * 1024)
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(client.close)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", port))
        client.sendall(f"GET /{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        [record] = yield self.closedRecords()
        self.assertEqual(record.reason, "idle-timeout")
        self.assertLess(record.bytesOut, 64 * 1024 * 1024)
        self.assertEqual(openFiles(name), [])
        self.assertEqual(self.failures, [])

    @inlineCallbacks
    def test_manyRangesAborted(self):
        """
        C{Range: bytes=0-,0-,...} x200 on a large file is a 200 with the file's length;
        a client that aborts that download leaves no traceback in the log.
        """
        port = self.serve()
        size = 100 * 1024 * 1024
        name = self.bigFile(size)
        request = (f"GET /{name} HTTP/1.1\r\nHost: x\r\nRange: bytes="
                   + ",".join(["0-"] * 200) + "\r\n\r\n").encode()
        response = yield deferToThread(headOf, port, request)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-length"], str(size))
        [record] = yield self.closedRecords()
        self.assertLess(record.bytesOut, size)
        self.assertEqual(openFiles(name), [])
        self.assertEqual(self.failures, [])

    @inlineCallbacks
    def test_badRequestsAnswered(self):
        """
        An oversize URI, oversize headers and a missing C{Host} get their status on the
        wire (414, 431, 400), not a silent close.
        """
        port = self.serve()
        for data, status in ((b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", 414),
                             (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"v" * 20000
                              + b"\r\n\r\n", 431),
                             (b"GET /a.txt HTTP/1.1\r\n\r\n", 400)):
            received = yield deferToThread(exchange, port, data, False)
            self.assertEqual(parseResponse(received).status, status)
