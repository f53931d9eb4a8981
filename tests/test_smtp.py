"""
Tests for L{portserver.protocols.smtp}: options, an in-memory SMTP conversation, and real
deliveries through L{PortServer} with Python's C{smtplib} as the client.
"""

from __future__ import annotations

import errno
import mailbox
import os
import smtplib
import socket
import stat
from email.message import EmailMessage
from types import SimpleNamespace

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from portserver.interfaces import IPortProtocol
from portserver.options import OptionsError
from portserver.protocols import smtp as smtpModule
from portserver.protocols.smtp import smtp
from portserver.provider import PortProtocol
from portserver.server import PortServer
from tests.support import makePlan, spec

PEER = IPv4Address("TCP", "203.0.113.7", 40001)
HOST = IPv4Address("TCP", "192.0.2.25", 25)
#: 2023-11-14 22:13:20.25 UTC.
NOW = 1700000000.25
DEADLINE = 10  # seconds smtplib may wait on a loaded CI machine


def options(base, **extra):
    """
    Valid smtp options delivering under C{base} for example.com and example.org.
    """
    result = {"domains": ["example.com", "Example.ORG"], "maildir": base,
              "hostname": "mx.example.com"}
    result.update(extra)
    return result


def files(directory):
    """
    The names of the files in C{directory} (none if it does not exist).
    """
    if not os.path.isdir(directory):
        return []
    return sorted(os.listdir(directory))


def replyCodes(output: bytes) -> list[int]:
    """
    The codes of the final lines of the replies in C{output}.
    """
    return [int(line[:3]) for line in output.split(b"\r\n") if line[3:4] == b" "]


class Conversation:
    """
    One smtp protocol on a L{StringTransport}, built through the provider.
    """

    def __init__(self, testCase, base=None, clock=None, transport=None, peer=PEER,
                 **extra):
        self.base = base or testCase.mktemp()
        self.clock = clock or Clock()
        if clock is None:
            self.clock.advance(NOW)
        service = SimpleNamespace(name="mail",
                                  options=smtp.validateOptions(options(self.base, **extra)))
        self.factory = smtp.buildFactory(service, self.clock)
        self.protocol = self.factory.buildProtocol(peer)
        self.transport = transport or StringTransport(hostAddress=HOST, peerAddress=peer)
        self.protocol.makeConnection(self.transport)
        self.greeting = self.take()

    def take(self) -> bytes:
        output = self.transport.value()
        self.transport.clear()
        return output

    def send(self, *lines: bytes) -> bytes:
        """
        Send C{lines} (CRLF added), return what the server answered.
        """
        self.protocol.dataReceived(b"".join(line + b"\r\n" for line in lines))
        return self.take()

    def codes(self, *lines: bytes) -> list[int]:
        return replyCodes(self.send(*lines))

    def envelope(self, *recipients: bytes, sender=b"<sender@elsewhere.test>") -> list[int]:
        """
        EHLO, MAIL FROM and a RCPT TO per recipient; the reply codes.
        """
        return self.codes(b"EHLO client.test", b"MAIL FROM:" + sender,
                          *[b"RCPT TO:<" + r + b">" for r in recipients])

    def maildir(self, address: str) -> str:
        local, domain = address.split("@")
        return os.path.join(os.path.abspath(self.base), domain, local)

    def delivered(self, address: str) -> list[bytes]:
        """
        The contents of the files in C{address}'s C{new/}.
        """
        new = os.path.join(self.maildir(address), "new")
        result = []
        for name in files(new):
            with open(os.path.join(new, name), "rb") as f:
                result.append(f.read())
        return result

    def pending(self, address: str) -> list[str]:
        return files(os.path.join(self.maildir(address), "tmp"))

    def spooled(self) -> list[str]:
        """
        The files in the spool, where a message is written once before delivery.
        """
        return files(os.path.join(os.path.abspath(self.base), ".spool"))


MESSAGE = (b"Subject: hello", b"From: sender@elsewhere.test", b"", b"First line.",
           b"..a line that starts with a dot", b"Last line.", b".")


class FailingFile:
    """
    A file whose writes, after the first (the Received header), fail as on a full disk.
    """

    def __init__(self, real):
        self.real = real
        self.writes = 0

    def write(self, data):
        self.writes += 1
        if self.writes > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)


# -- the provider and its options ------------------------------------------------------


class ProviderTests(SynchronousTestCase):
    """
    The C{smtp} declaration.
    """

    def test_declaration(self):
        """
        C{smtp} is a L{PortProtocol} providing L{IPortProtocol}, named smtp, on port 25,
        with a TCP side only and a one-line description.
        """
        self.assertIsInstance(smtp, PortProtocol)
        verifyObject(IPortProtocol, smtp)
        self.assertEqual(smtp.name, "smtp")
        self.assertEqual(smtp.wellKnownPort, 25)
        self.assertEqual(smtp.transports, frozenset({"tcp"}))
        self.assertNotIn("\n", smtp.description)

    def test_factoryQuiet(self):
        """
        The factory does not log every start and stop, nor do its protocols log each
        message received.
        """
        conversation = Conversation(self)
        self.assertFalse(conversation.factory.noisy)
        self.assertFalse(conversation.protocol.noisy)

    def test_nothingCreatedAtBuild(self):
        """
        Building the factory creates nothing on disk (it may run before privileges are
        dropped): a missing base directory is made at the first delivery.
        """
        conversation = Conversation(self)
        self.assertFalse(os.path.exists(conversation.base))
        conversation.envelope(b"bob@example.com")
        self.assertEqual(replyCodes(conversation.send(b"DATA", *MESSAGE)), [354, 250])
        self.assertEqual(len(conversation.delivered("bob@example.com")), 1)

    def test_maildirNotADirectory(self):
        """
        A C{maildir} that exists as a file makes building the factory fail, naming it.
        """
        path = self.mktemp()
        with open(path, "w"):
            pass
        service = SimpleNamespace(name="mail", options=smtp.validateOptions(options(path)))
        error = self.assertRaises(ValueError, smtp.buildFactory, service, Clock())
        self.assertIn("not a directory", str(error))


class OptionsTests(SynchronousTestCase):
    """
    C{smtp.validateOptions}.
    """

    def problems(self, given) -> dict[str, str]:
        """
        The problems C{given} has, as C{{option: message}}.
        """
        error = self.assertRaises(OptionsError, smtp.validateOptions, given)
        self.assertIsInstance(error, ValueError)
        return {p.option: p.message for p in error.problems}

    def test_defaults(self):
        """
        With only the required options, the rest take their defaults: any local part,
        10 MiB, a 300 s timeout, this host's name; C{maildir} is made absolute
        (relative to the current directory) and domains are lower-cased. An explicit
        null C{recipients} means any local part too.
        """
        result = smtp.validateOptions({"domains": ["Example.COM."], "maildir": "spool"})
        self.assertEqual(result, {
            "domains": ["example.com"], "recipients": None, "max_size": 10485760,
            "maildir": os.path.join(os.getcwd(), "spool"), "timeout": 300,
            "hostname": smtpModule.defaultHostname(), "tls": None,
        })
        self.assertIn(smtpModule.defaultHostname(), (socket.gethostname(), "localhost"))
        explicitNone = smtp.validateOptions(options("m", recipients=None))
        self.assertIsNone(explicitNone["recipients"])

    def test_required(self):
        """
        C{domains} and C{maildir} are required; both are named.
        """
        problems = self.problems({})
        self.assertEqual(problems, {"domains": "is required", "maildir": "is required"})

    def test_domains(self):
        """
        C{domains} must be a non-empty list of domain names.
        """
        self.assertIn("must be a list", self.problems(options("m", domains="example.com"))
                      ["domains"])
        self.assertIn("at least one", self.problems(options("m", domains=[]))["domains"])
        self.assertIn("not a domain name",
                      self.problems(options("m", domains=["a b"]))["domains"])
        self.assertIn("not a domain name",
                      self.problems(options("m", domains=["../etc"]))["domains"])
        self.assertIn("non-empty string", self.problems(options("m", domains=[7]))["domains"])

    def test_addressLiteralDomains(self):
        """
        C{domains} may list address literals, kept in their canonical form; an unquoted
        one (a YAML list) is told to be quoted, a malformed one is refused.
        """
        result = smtp.validateOptions(options(
            "m", domains=["example.com", "[127.0.0.1]", "[ipv6:0:0::1]"],
            recipients=["bob@[IPv6:::1]"]))
        self.assertEqual(result["domains"], ["example.com", "[127.0.0.1]", "[IPv6:::1]"])
        self.assertEqual(result["recipients"], ["bob@[IPv6:::1]"])
        self.assertIn("must be quoted", self.problems(
            options("m", domains=[["127.0.0.1"]]))["domains"])
        self.assertIn("not an address literal", self.problems(
            options("m", domains=["[1.2.3]"]))["domains"])

    def test_recipients(self):
        """
        C{recipients} must be addresses in one of the domains, with local parts that can be
        directory names; they are lower-cased.
        """
        self.assertIn("not in one of the domains", self.problems(
            options("m", recipients=["bob@example.net"]))["recipients"])
        self.assertIn("local@domain", self.problems(
            options("m", recipients=["bob"]))["recipients"])
        self.assertIn("not allowed", self.problems(
            options("m", recipients=["../bob@example.com"]))["recipients"])
        self.assertIn("at least one", self.problems(
            options("m", recipients=[]))["recipients"])
        result = smtp.validateOptions(options("m", recipients=["Bob@Example.com"]))
        self.assertEqual(result["recipients"], ["bob@example.com"])

    def test_maxSize(self):
        """
        C{max_size} must be an integer above 0 (not a boolean or a string).
        """
        for bad, fragment in [(0, "greater than 0"), (-5, "greater than 0"),
                              ("10M", "must be int"), (True, "must be int")]:
            self.assertIn(fragment, self.problems(options("m", max_size=bad))["max_size"])

    def test_others(self):
        """
        A bad C{hostname}, C{timeout} or C{maildir}, and an unknown option, are each
        refused, named.
        """
        problems = self.problems(options("", hostname="two words", timeout=0, bogus=1))
        self.assertEqual(sorted(problems), ["bogus", "hostname", "maildir", "timeout"])


# -- the conversation ------------------------------------------------------------------


class ConversationTests(SynchronousTestCase):
    """
    The SMTP dialogue over a L{StringTransport}, no sockets.
    """

    def test_greetingAndSize(self):
        """
        The greeting names the configured host name; the EHLO reply advertises SIZE with
        C{max_size}, PIPELINING, 8BITMIME and ENHANCEDSTATUSCODES (RFC 5321's usual set),
        and no empty AUTH.
        """
        conversation = Conversation(self, max_size=12345)
        self.assertEqual(conversation.greeting, b"220 mx.example.com ESMTP portserver\r\n")
        reply = conversation.send(b"EHLO client.test")
        self.assertEqual(reply.split(b"\r\n")[1:-1], [
            b"250-SIZE 12345", b"250-PIPELINING", b"250-8BITMIME",
            b"250 ENHANCEDSTATUSCODES"])
        self.assertTrue(reply.startswith(b"250-mx.example.com Hello 203.0.113.7"))

    def test_unknownDomain(self):
        """
        A recipient in any other domain is refused with 550: no relaying.
        """
        conversation = Conversation(self)
        self.assertEqual(conversation.envelope(b"bob@example.net", b"bob@example.com.evil"),
                         [250, 250, 550, 550])
        self.assertEqual(conversation.codes(b"DATA"), [503])

    def test_domainCaseInsensitive(self):
        """
        Domains match whatever their case; the copy goes to the lower-cased Maildir.
        """
        conversation = Conversation(self)
        self.assertEqual(conversation.envelope(b"Bob@EXAMPLE.org"), [250, 250, 250])
        self.assertEqual(replyCodes(conversation.send(b"DATA", *MESSAGE)), [354, 250])
        self.assertEqual(len(conversation.delivered("bob@example.org")), 1)

    def test_listedRecipients(self):
        """
        With C{recipients}, only those addresses are accepted; others in the same domain
        are refused with 550.
        """
        conversation = Conversation(self, recipients=["alice@example.com"])
        self.assertEqual(
            conversation.envelope(b"alice@example.com", b"ALICE@example.com",
                                  b"bob@example.com", b"alice@example.org"),
            [250, 250, 250, 250, 550, 550])

    def test_unsafeLocalPart(self):
        """
        A local part that could escape the Maildir tree (C{..}, C{/}) is refused with 553,
        and nothing is created.
        """
        conversation = Conversation(self)
        codes = conversation.envelope(b"../../etc@example.com", b"a/b@example.com",
                                      b'"x y"@example.com')
        self.assertEqual(codes, [250, 250, 553, 553, 553])
        self.assertFalse(os.path.exists(conversation.base))

    def test_tooManyRecipients(self):
        """
        Past C{MAX_RECIPIENTS} recipients, more are refused with 452 (try later).
        """
        conversation = Conversation(self)
        recipients = [b"u%d@example.com" % i for i in range(smtpModule.MAX_RECIPIENTS + 1)]
        codes = conversation.envelope(*recipients)
        self.assertEqual(codes[-2:], [250, 452])

    def test_mailSize(self):
        """
        C{MAIL FROM} with a C{SIZE=} over C{max_size} is refused with 552; at the limit it
        is accepted; a malformed one is a syntax error.
        """
        conversation = Conversation(self, max_size=1000)
        self.assertEqual(conversation.codes(b"EHLO client.test",
                                            b"MAIL FROM:<a@elsewhere.test> SIZE=1001",
                                            b"MAIL FROM:<a@elsewhere.test> SIZE=x",
                                            b"MAIL FROM:<a@elsewhere.test> size=1000"),
                         [250, 552, 501, 250])

    def test_dataTooBig(self):
        """
        A message over C{max_size} is refused with 552, after the final dot; nothing is
        delivered, the spooled message is gone, no empty Maildir is left, and the next
        message on the same connection is delivered.
        """
        conversation = Conversation(self, max_size=1000)
        conversation.envelope(b"bob@example.com")
        self.assertEqual(conversation.codes(b"DATA"), [354])
        self.assertEqual(len(conversation.spooled()), 1)
        self.assertEqual(conversation.codes(*[b"x" * 98] * 10), [])  # 1000 bytes: fits
        self.assertEqual(conversation.codes(b"y"), [])  # 1003: too big, no reply yet
        self.assertEqual(conversation.spooled(), [])
        self.assertEqual(conversation.codes(*[b"z" * 500] * 10), [])  # read and dropped
        self.assertEqual(conversation.codes(b"."), [552])
        self.assertEqual(conversation.delivered("bob@example.com"), [])
        self.assertEqual(conversation.spooled(), [])
        self.assertFalse(os.path.exists(conversation.maildir("bob@example.com")))
        conversation.codes(b"MAIL FROM:<a@elsewhere.test>", b"RCPT TO:<bob@example.com>")
        self.assertEqual(replyCodes(conversation.send(b"DATA", *MESSAGE)), [354, 250])
        self.assertEqual(len(conversation.delivered("bob@example.com")), 1)

    def test_delivery(self):
        """
        A message for two recipients gives one file in each C{new/}, C{tmp/} empty, each
        starting with the Return-Path (the envelope sender) and a Received header in RFC
        5321's syntax naming the HELO name, the client's address (its port in a comment),
        the host name and the clock's date, then the message, dot-unstuffed.
        """
        conversation = Conversation(self)
        self.assertEqual(conversation.envelope(b"alice@example.com", b"bob@example.org"),
                         [250, 250, 250, 250])
        reply = conversation.send(b"DATA", *MESSAGE)
        self.assertEqual(replyCodes(reply), [354, 250])
        for address in ("alice@example.com", "bob@example.org"):
            (content,) = conversation.delivered(address)
            self.assertEqual(conversation.pending(address), [])
            self.assertEqual(files(os.path.join(conversation.maildir(address), "cur")), [])
            header, rest = content.split(b"\nSubject: hello\n", 1)
            self.assertTrue(header.startswith(
                b"Return-Path: <sender@elsewhere.test>\n"
                b"Received: from client.test ([203.0.113.7])\n\t(port 40001)\n"
                b"\tby mx.example.com with ESMTP id "), header)
            self.assertTrue(header.endswith(b";\n\tTue, 14 Nov 2023 22:13:20 +0000"), header)
            self.assertEqual(rest, b"From: sender@elsewhere.test\n\nFirst line.\n"
                                   b".a line that starts with a dot\nLast line.\n")
        name = files(os.path.join(conversation.maildir("alice@example.com"), "new"))[0]
        self.assertTrue(name.startswith(f"1700000000.M250000P{os.getpid()}Q"), name)
        self.assertTrue(name.endswith(".mx.example.com"), name)

    def test_receivedIPv6(self):
        """
        An IPv6 client is written as an RFC 5321 IPv6 address literal, with its port, and
        bracketed in the log.
        """
        events = []
        self.patch(smtpModule, "log", Logger(observer=events.append))
        peer = IPv6Address("TCP", "2001:db8::7", 40002)
        conversation = Conversation(self, peer=peer)
        conversation.envelope(b"bob@example.com")
        conversation.send(b"DATA", *MESSAGE)
        (content,) = conversation.delivered("bob@example.com")
        self.assertIn(b"([IPv6:2001:db8::7])\n\t(port 40002)", content)
        self.assertEqual([e["client"] for e in events], ["[2001:db8::7]:40002"])

    def test_receivedMappedIPv4(self):
        """
        An IPv4 client on a dual-stack listener (an IPv4-mapped IPv6 address) is written
        as plain IPv4, in the header and in the log.
        """
        events = []
        self.patch(smtpModule, "log", Logger(observer=events.append))
        conversation = Conversation(self, peer=IPv6Address("TCP", "::ffff:203.0.113.7", 9))
        conversation.envelope(b"bob@example.com")
        conversation.send(b"DATA", *MESSAGE)
        (content,) = conversation.delivered("bob@example.com")
        self.assertIn(b"([203.0.113.7])\n\t(port 9)", content)
        self.assertEqual([e["client"] for e in events], ["203.0.113.7:9"])

    def test_heloSanitised(self):
        """
        The HELO name cannot put anything but itself in the Received header.
        """
        conversation = Conversation(self)
        conversation.codes(b"HELO evil\nX-Injected: yes", b"MAIL FROM:<a@elsewhere.test>",
                           b"RCPT TO:<bob@example.com>")
        conversation.send(b"DATA", *MESSAGE)
        (content,) = conversation.delivered("bob@example.com")
        self.assertNotIn(b"\nX-Injected", content)
        self.assertIn(b"\nReceived: from evil?X-Injected:?yes (", content)
        self.assertIn(b"with SMTP id", content)

    def test_duplicateRecipient(self):
        """
        A recipient given twice gets one copy.
        """
        conversation = Conversation(self)
        conversation.envelope(b"bob@example.com", b"BOB@example.com")
        self.assertEqual(replyCodes(conversation.send(b"DATA", *MESSAGE)), [354, 250])
        self.assertEqual(len(conversation.delivered("bob@example.com")), 1)

    def test_replyAfterRename(self):
        """
        The 250 is written only once the copies are in C{new/}: at that moment of the
        write, both files are there and C{tmp/} is empty.
        """
        seen = []

        class Checking(StringTransport):
            def write(transport, data):
                if data.startswith(b"250 2.0.0 Message accepted"):
                    seen.append([(conversation.delivered(a), conversation.pending(a))
                                 for a in ("alice@example.com", "bob@example.com")])
                super().write(data)

            def writeSequence(transport, data):
                transport.write(b"".join(data))

        transport = Checking(hostAddress=HOST, peerAddress=PEER)
        conversation = Conversation(self, transport=transport)
        conversation.envelope(b"alice@example.com", b"bob@example.com")
        self.assertEqual(replyCodes(conversation.send(b"DATA", *MESSAGE)), [354, 250])
        (state,) = seen
        for delivered, pending in state:
            self.assertEqual(len(delivered), 1)
            self.assertEqual(pending, [])

    def test_syncedBeforeRename(self):
        """
        The message is C{fsync}ed before any copy is renamed into C{new/}, and C{new/} is
        synced after.
        """
        conversation = Conversation(self)
        store = conversation.factory.store
        events = []
        realRename = store.rename
        store.fsync = lambda fd: events.append(
            "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        store.rename = lambda a, b: (events.append("rename"), realRename(a, b))
        conversation.envelope(b"alice@example.com", b"bob@example.com")
        self.assertEqual(replyCodes(conversation.send(b"DATA", *MESSAGE)), [354, 250])
        # The message is synced once (the spool file), then linked and renamed for each
        # recipient, then each new/ is synced.
        self.assertEqual(events, ["file", "rename", "rename", "dir", "dir"])

    def test_syncFails(self):
        """
        When writing a copy fails at the end (fsync: disk full), the reply is 451, not 250,
        and no copy is delivered (not even those already written) and C{tmp/} is empty.
        """
        conversation = Conversation(self)
        calls = []

        def fsync(fd):
            calls.append(fd)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)

        conversation.factory.store.fsync = fsync
        conversation.envelope(b"alice@example.com", b"bob@example.com")
        reply = conversation.send(b"DATA", *MESSAGE)
        self.assertEqual(replyCodes(reply), [354, 451])
        self.assertEqual(len(calls), 2)
        for address in ("alice@example.com", "bob@example.com"):
            self.assertEqual(conversation.delivered(address), [])
            self.assertEqual(conversation.pending(address), [])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_renameFails(self):
        """
        When moving a copy into C{new/} fails, the reply is 451 and the copies already
        moved are taken back out.
        """
        conversation = Conversation(self)
        realRename = conversation.factory.store.rename
        calls = []

        def rename(source, destination):
            calls.append(source)
            if len(calls) == 2:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            realRename(source, destination)

        conversation.factory.store.rename = rename
        conversation.envelope(b"alice@example.com", b"bob@example.com")
        self.assertEqual(replyCodes(conversation.send(b"DATA", *MESSAGE)), [354, 451])
        self.assertEqual(len(calls), 2)
        for address in ("alice@example.com", "bob@example.com"):
            self.assertEqual(conversation.delivered(address), [])
            self.assertEqual(conversation.pending(address), [])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_writeFails(self):
        """
        When writing a line fails (disk full), the rest of the message is read and dropped
        and the final dot is answered 451; the C{tmp/} copy is removed.
        """
        conversation = Conversation(self)
        store = conversation.factory.store
        realCreate = store.createSpool

        def create():
            path, name, file = realCreate()
            return path, name, FailingFile(file)

        store.createSpool = create
        conversation.envelope(b"bob@example.com")
        self.assertEqual(replyCodes(conversation.send(b"DATA", *MESSAGE)), [354, 451])
        self.assertEqual(conversation.delivered("bob@example.com"), [])
        self.assertEqual(conversation.spooled(), [])

    def test_maildirUnusable(self):
        """
        When a recipient's Maildir cannot be made (its domain's path is a file), the final
        dot is answered 451 and the other recipient's copy, already delivered, is taken
        back: nothing is delivered, nothing is left in the spool.
        """
        base = self.mktemp()
        os.makedirs(os.path.join(base, "example.com"))
        with open(os.path.join(base, "example.org"), "w"):
            pass
        conversation = Conversation(self, base=base)
        conversation.envelope(b"alice@example.com", b"bob@example.org")
        self.assertEqual(replyCodes(conversation.send(b"DATA", *MESSAGE)), [354, 451])
        self.assertEqual(conversation.delivered("alice@example.com"), [])
        self.assertEqual(conversation.pending("alice@example.com"), [])
        self.assertEqual(conversation.spooled(), [])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(conversation.codes(b"NOOP"), [250])  # back to commands

    def test_clientGoesAway(self):
        """
        A client that disconnects in the middle of a message leaves nothing in the spool,
        no delivery and no Maildir.
        """
        conversation = Conversation(self)
        conversation.envelope(b"bob@example.com")
        conversation.send(b"DATA", b"Subject: half")
        self.assertEqual(len(conversation.spooled()), 1)
        conversation.protocol.connectionLost(None)
        self.assertEqual(conversation.spooled(), [])
        self.assertFalse(os.path.exists(conversation.maildir("bob@example.com")))
        self.assertEqual(conversation.delivered("bob@example.com"), [])

    def test_lineTooLong(self):
        """
        An overlong line in a message is answered 500 and the connection closed (not taken
        as the end of the message), the C{tmp/} copy removed.
        """
        conversation = Conversation(self)
        conversation.envelope(b"bob@example.com")
        conversation.send(b"DATA")
        reply = conversation.send(b"x" * (conversation.protocol.MAX_LENGTH + 1))
        self.assertEqual(replyCodes(reply), [500])
        self.assertTrue(conversation.transport.disconnecting)
        conversation.protocol.connectionLost(None)
        self.assertEqual(conversation.spooled(), [])

    def test_timeout(self):
        """
        An idle client is sent 421 and disconnected after C{timeout} seconds of the
        injected clock.
        """
        conversation = Conversation(self, timeout=30)
        conversation.codes(b"EHLO client.test")
        conversation.clock.advance(29)
        self.assertFalse(conversation.transport.disconnecting)
        conversation.clock.advance(1)
        self.assertEqual(replyCodes(conversation.take()), [421])
        self.assertTrue(conversation.transport.disconnecting)
        conversation.protocol.connectionLost(None)
        self.assertEqual(conversation.clock.getDelayedCalls(), [])

    def test_logged(self):
        """
        Each delivered message is logged once, with the service name, id, size, recipients
        and the client's address and port.
        """
        events = []
        self.patch(smtpModule, "log", Logger(observer=events.append))
        conversation = Conversation(self)
        conversation.envelope(b"alice@example.com", b"bob@example.com")
        reply = conversation.send(b"DATA", *MESSAGE)
        (event,) = events
        self.assertEqual(event["service"], "mail")
        self.assertEqual(event["client"], "203.0.113.7:40001")
        self.assertEqual(event["recipients"], "alice@example.com, bob@example.com")
        self.assertEqual(event["size"], sum(len(line) + 2 for line in MESSAGE[:-1]) - 1)
        self.assertIn(event["id"].encode(), reply)


# -- real deliveries -------------------------------------------------------------------


def emailMessage(body="Hello there.\n.leading dot\n", subject="test"):
    message = EmailMessage()
    message["From"] = "sender@elsewhere.test"
    message["To"] = "alice@example.com"
    message["Subject"] = subject
    message.set_content(body)
    return message


class SMTPIntegrationTests(TestCase):
    """
    A real smtp listener on 127.0.0.1 through L{PortServer}; C{smtplib} the client, in a
    thread while the reactor runs.
    """

    timeout = 60

    def setUp(self):
        self.base = self.mktemp()
        provider = {smtp.name: smtp}
        service = spec("mail", protocol="smtp", port=0, providers=provider,
                       options=options(self.base, max_size=2000))
        self.server = PortServer(makePlan(service), reactor)
        self.server.startService()
        self.addCleanup(self.server.stopService)
        self.port = self.server.addressOf("mail", "tcp").port

    def client(self):
        return smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test",
                            timeout=DEADLINE)

    @inlineCallbacks
    def test_twoRecipients(self):
        """
        A message sent to two recipients lands in both Maildirs, body intact, with a
        Received header naming the client's real source port.
        """
        message = emailMessage()

        def send():
            with self.client() as client:
                port = client.sock.getsockname()[1]
                refused = client.send_message(
                    message, to_addrs=["alice@example.com", "bob@example.org"])
                return port, refused

        port, refused = yield deferToThread(send)
        self.assertEqual(refused, {})
        for address in ("alice@example.com", "bob@example.org"):
            local, domain = address.split("@")
            box = mailbox.Maildir(os.path.join(self.base, domain, local), create=False)
            (stored,) = box.values()
            self.assertEqual(stored["Subject"], "test")
            self.assertEqual(stored.get_payload(), "Hello there.\n.leading dot\n")
            self.assertIn(f"([127.0.0.1])\n\t(port {port})", stored["Received"])
            self.assertIn("by mx.example.com with ESMTP", stored["Received"])
            self.assertEqual(
                os.listdir(os.path.join(self.base, domain, local, "tmp")), [])

    @inlineCallbacks
    def test_refusedRecipient(self):
        """
        A recipient outside the domains is refused with 550 (smtplib raises
        SMTPRecipientsRefused); nothing is delivered.
        """
        def send():
            with self.client() as client:
                client.send_message(emailMessage(), to_addrs=["eve@example.net"])

        error = yield self.assertFailure(deferToThread(send), smtplib.SMTPRecipientsRefused)
        self.assertEqual(error.recipients["eve@example.net"][0], 550)
        self.assertFalse(os.path.exists(self.base))

    @inlineCallbacks
    def test_oversizedAnnounced(self):
        """
        A message over C{max_size} is refused with 552 when its size is announced with
        C{MAIL FROM ... SIZE=}.
        """
        def send():
            with self.client() as client:
                client.send_message(emailMessage(body="x" * 3000 + "\n"),
                                    to_addrs=["alice@example.com"])

        error = yield self.assertFailure(deferToThread(send), smtplib.SMTPSenderRefused)
        self.assertEqual(error.smtp_code, 552)

    @inlineCallbacks
    def test_oversizedData(self):
        """
        A message over C{max_size} whose size was not announced is refused with 552 after
        its final dot, and nothing is delivered.
        """
        def send():
            with self.client() as client:
                client.ehlo()
                client.mail("sender@elsewhere.test")
                client.rcpt("alice@example.com")
                return client.data(emailMessage(body=("x" * 70 + "\n") * 50).as_bytes())

        code, _ = yield deferToThread(send)
        self.assertEqual(code, 552)
        self.assertFalse(os.path.exists(os.path.join(self.base, "example.com", "alice")))
        self.assertEqual(os.listdir(os.path.join(self.base, ".spool")), [])


class SMTPDefaultLimitsTests(SynchronousTestCase):
    """
    An C{smtp} service is bounded in time without any config.
    """

    def test_idleTimeoutByDefault(self):
        """
        The protocol declares C{idle_timeout: 300} (RFC 5321 4.5.3.2), so the tracking
        layer closes a silent connection whatever the SMTP state, and C{/api/listeners}
        and C{--check} show it.
        """
        from portserver.limits import LIMITS_SCHEMA, Limits
        from portserver.options import checkOptions
        from portserver.protocols.smtp import smtp
        self.assertEqual(smtp.defaultLimits, {"idle_timeout": 300})
        limits = Limits.fromOptions({**checkOptions({}, LIMITS_SCHEMA),
                                     **smtp.defaultLimits})
        self.assertEqual(limits.asOptions()["idle_timeout"], 300)


class HostileInputTests(SynchronousTestCase):
    """
    Input a client should not send gets an SMTP reply, never an unhandled exception, and
    the connection stays usable.
    """

    def test_nonASCIICommand(self):
        """
        A command of non-ASCII bytes is answered 500 (before: C{UnicodeDecodeError} in
        Twisted's command lookup, and the connection dropped); the next command works.
        """
        conversation = Conversation(self)
        self.assertEqual(conversation.codes(b"\xff\xfe HELO x"), [500])
        self.assertEqual(conversation.codes(b"NOOP"), [250])
        self.assertFalse(conversation.transport.disconnecting)

    def test_hugeSize(self):
        """
        C{SIZE=} with 5000 digits is answered 552 (before: Python's C{ValueError} on a
        5000-digit int); a sender can then try again.
        """
        conversation = Conversation(self)
        conversation.send(b"EHLO client.example")
        self.assertEqual(conversation.codes(b"MAIL FROM:<a@b.example> SIZE=" + b"9" * 5000),
                         [552])
        self.assertEqual(conversation.codes(b"MAIL FROM:<a@b.example> SIZE=100"), [250])
        self.assertEqual(conversation.codes(b"MAIL FROM:<a@b.example> SIZE=" + b"0" * 40
                                            + b"100"), [503])  # sender already given


class SpoolOnceTests(SynchronousTestCase):
    """
    A message is written once and delivered by hard links: bounded descriptors and disk
    per transaction, whatever its recipients; Maildirs are private.
    """

    RECIPIENTS = [b"user%d@example.com" % i for i in range(100)]

    def openDescriptors(self) -> int:
        return len(os.listdir("/proc/self/fd"))

    def test_descriptorsBounded(self):
        """
        During DATA to 100 recipients the transaction holds one more descriptor (the
        spool file), not one per recipient (before: 100).
        """
        if not os.path.isdir("/proc/self/fd"):
            raise SkipTest("counting descriptors needs /proc")
        conversation = Conversation(self)
        self.assertEqual(conversation.envelope(*self.RECIPIENTS), [250, 250] + [250] * 100)
        before = self.openDescriptors()
        self.assertEqual(conversation.codes(b"DATA", b"Subject: many"), [354])
        self.assertLessEqual(self.openDescriptors() - before, 1)
        self.assertEqual(conversation.codes(b"."), [250])
        self.assertEqual(self.openDescriptors(), before)

    def test_hardLinksOneInode(self):
        """
        The 100 delivered copies are one file on disk (hard links: one inode, 100
        links), each with the whole message, and the spool is empty after.
        """
        conversation = Conversation(self)
        conversation.envelope(*self.RECIPIENTS)
        self.assertEqual(replyCodes(conversation.send(b"DATA", *MESSAGE)), [354, 250])
        inodes = set()
        for recipient in self.RECIPIENTS:
            new = os.path.join(conversation.maildir(recipient.decode()), "new")
            [name] = os.listdir(new)
            info = os.stat(os.path.join(new, name))
            inodes.add(info.st_ino)
            self.assertEqual(info.st_nlink, 100)
        self.assertEqual(len(inodes), 1)
        self.assertIn(b"First line.", conversation.delivered("user7@example.com")[0])
        self.assertEqual(conversation.spooled(), [])

    def test_copyWhereNoLink(self):
        """
        Where a link is impossible (another file system: EXDEV), each copy is a synced
        copy of its own, with the same content.
        """
        conversation = Conversation(self)

        def noLink(source, destination):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

        conversation.factory.store.link = noLink
        conversation.envelope(b"alice@example.com", b"bob@example.com")
        self.assertEqual(replyCodes(conversation.send(b"DATA", *MESSAGE)), [354, 250])
        alice, bob = (conversation.delivered(a)
                      for a in ("alice@example.com", "bob@example.com"))
        self.assertEqual(alice, bob)
        new = os.path.join(conversation.maildir("alice@example.com"), "new")
        self.assertEqual(os.stat(os.path.join(new, os.listdir(new)[0])).st_nlink, 1)

    def test_privateDirectories(self):
        """
        Every directory portserver makes for mail is 0700: the domain's, the local
        part's (before: 0755), its tmp/, new/ and cur/, and the spool.
        """
        conversation = Conversation(self)
        conversation.envelope(b"alice@example.com")
        self.assertEqual(replyCodes(conversation.send(b"DATA", *MESSAGE)), [354, 250])
        maildir = conversation.maildir("alice@example.com")
        for path in (os.path.dirname(maildir), maildir, os.path.join(maildir, "tmp"),
                     os.path.join(maildir, "new"), os.path.join(maildir, "cur"),
                     os.path.join(os.path.abspath(conversation.base), ".spool")):
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode),
                             0o700 & ~_umask(), path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class RepeatedFailureTests(SynchronousTestCase):
    """
    A full disk fails every delivery: its traceback is logged once per interval.
    """

    def test_fullDiskLoggedOnce(self):
        """
        Five messages failing on the same fsync (disk full) are five 451s and one
        logged traceback; the next after 10 s is logged again, with the count.
        """
        from twisted.logger import capturedLogs

        conversation = Conversation(self)

        def fsync(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        conversation.factory.store.fsync = fsync
        conversation.send(b"EHLO client.test")
        for _ in range(5):
            conversation.codes(b"MAIL FROM:<a@elsewhere.test>", b"RCPT TO:<bob@example.com>")
            self.assertEqual(replyCodes(conversation.send(b"DATA", *MESSAGE)), [354, 451])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        conversation.clock.advance(10)
        with capturedLogs() as events:
            conversation.codes(b"MAIL FROM:<a@elsewhere.test>", b"RCPT TO:<bob@example.com>")
            conversation.send(b"DATA", *MESSAGE)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual([e.get("suppressed") for e in events if "log_failure" in e], [4])


class RFC5321Tests(SynchronousTestCase):
    """
    What RFC 5321 (and the extensions advertised) ask of a receiving server.
    """

    def test_returnPath(self):
        """
        Every stored message starts with C{Return-Path: <sender>}; a bounce's (C{MAIL
        FROM:<>}) is C{<>} (RFC 5321 4.4).
        """
        for sender, expected in ((b"<a@elsewhere.test>", b"Return-Path: <a@elsewhere.test>\n"),
                                 (b"<>", b"Return-Path: <>\n")):
            conversation = Conversation(self)
            conversation.envelope(b"bob@example.com", sender=sender)
            self.assertEqual(replyCodes(conversation.send(b"DATA", *MESSAGE)), [354, 250])
            [content] = conversation.delivered("bob@example.com")
            self.assertTrue(content.startswith(expected), content)

    def test_postmasterAlwaysAccepted(self):
        """
        C{postmaster} (bare, or at a served domain) is accepted even with a
        C{recipients} list that does not name it (RFC 5321 4.5.1); a bare one is
        delivered to postmaster at the first listed domain name.
        """
        conversation = Conversation(self, recipients=["alice@example.com"])
        self.assertEqual(conversation.envelope(b"postmaster", b"PostMaster@example.org",
                                               b"carol@example.com"),
                         [250, 250, 250, 250, 550])
        self.assertEqual(replyCodes(conversation.send(b"DATA", *MESSAGE)), [354, 250])
        self.assertEqual(len(conversation.delivered("postmaster@example.com")), 1)
        self.assertEqual(len(conversation.delivered("postmaster@example.org")), 1)
        # The first listed domain name, not an address literal nor the first in order.
        conversation = Conversation(self, domains=["[127.0.0.1]", "zz.example", "aa.example"])
        conversation.envelope(b"POSTMASTER")
        self.assertEqual(replyCodes(conversation.send(b"DATA", *MESSAGE)), [354, 250])
        self.assertEqual(len(conversation.delivered("postmaster@zz.example")), 1)

    def test_unadvertisedParameters(self):
        """
        MAIL and RCPT parameters that EHLO did not advertise get 555 (RFC 5321
        4.1.1.11); BODY=8BITMIME and BODY=7BIT are taken, other BODY values are not;
        after HELO no parameter is.
        """
        conversation = Conversation(self)
        conversation.send(b"EHLO client.test")
        self.assertEqual(conversation.codes(b"MAIL FROM:<a@elsewhere.test> FOO=bar"), [555])
        self.assertEqual(conversation.codes(b"MAIL FROM:<a@elsewhere.test> BODY=BINARYMIME"),
                         [555])
        self.assertEqual(conversation.codes(b"MAIL FROM:<a@elsewhere.test> BODY=8BITMIME"),
                         [250])
        self.assertEqual(conversation.codes(b"RCPT TO:<bob@example.com> NOTIFY=NEVER"),
                         [555])
        self.assertEqual(conversation.codes(b"RCPT TO:<bob@example.com>"), [250])
        conversation = Conversation(self)
        conversation.send(b"HELO client.test")
        self.assertEqual(conversation.codes(b"MAIL FROM:<a@elsewhere.test> SIZE=10"), [555])

    def test_enhancedStatusCodes(self):
        """
        After EHLO, replies carry RFC 3463 enhanced codes; after HELO they do not.
        """
        conversation = Conversation(self)
        conversation.send(b"EHLO client.test")
        self.assertEqual(conversation.send(b"MAIL FROM:<a@elsewhere.test>"),
                         b"250 2.1.0 Sender address accepted\r\n")
        self.assertTrue(conversation.send(b"RCPT TO:<bob@example.com>").startswith(
            b"250 2.1.5 "))
        self.assertTrue(conversation.send(b"RCPT TO:<x@elsewhere.test>").startswith(
            b"550 5.7.1 "))
        reply = conversation.send(b"DATA", *MESSAGE)
        self.assertIn(b"354 Continue", reply)
        self.assertIn(b"250 2.0.0 Message accepted", reply)
        self.assertTrue(conversation.send(b"NOOP").startswith(b"250 2.0.0 "))
        conversation = Conversation(self)
        conversation.send(b"HELO client.test")
        self.assertEqual(conversation.send(b"MAIL FROM:<a@elsewhere.test>"),
                         b"250 Sender address accepted\r\n")

    def test_utf8AddressRefused(self):
        """
        A non-ASCII address without SMTPUTF8 (not offered) is refused with 553 5.6.7.
        """
        conversation = Conversation(self)
        conversation.send(b"EHLO client.test")
        self.assertTrue(conversation.send("MAIL FROM:<jos\u00e9@elsewhere.test>".encode())
                        .startswith(b"553 5.6.7 "))

    def test_addressLiteralRefused(self):
        """
        A recipient at an address literal (C{user@[127.0.0.1]}) is refused with 550 5.7.1,
        saying to use a served domain.
        """
        conversation = Conversation(self)
        conversation.send(b"EHLO client.test", b"MAIL FROM:<a@elsewhere.test>")
        reply = conversation.send(b"RCPT TO:<bob@[127.0.0.1]>")
        self.assertTrue(reply.startswith(b"550 5.7.1 "), reply)
        self.assertIn(b"Address literals are not accepted", reply)


    def test_receivedSyntax(self):
        """
        The Received header of a message to one recipient is RFC 5321 4.4's
        C{from HELO (TCP-info) by HOST with ESMTP id ID for <rcpt>; date}; with several
        recipients (one file serves them all) it names none.
        """
        conversation = Conversation(self)
        conversation.envelope(b"Bob@Example.com")
        self.assertEqual(replyCodes(conversation.send(b"DATA", *MESSAGE)), [354, 250])
        [content] = conversation.delivered("bob@example.com")
        received = content.split(b"\nSubject:")[0].split(b"\n", 1)[1]
        self.assertRegex(
            received.replace(b"\n\t", b" ").decode(),
            r"\AReceived: from client\.test \(\[203\.0\.113\.7\]\) \(port 40001\) "
            r"by mx\.example\.com with ESMTP id [0-9A-F]+\.[0-9A-F]+\.\d+ "
            r"for <Bob@Example\.com>; Tue, 14 Nov 2023 22:13:20 \+0000\Z")
        conversation.envelope(b"alice@example.com", b"carol@example.com")
        conversation.send(b"DATA", *MESSAGE)
        [content] = conversation.delivered("alice@example.com")
        self.assertNotIn(b" for <", content)

    def test_addressLiteralHelo(self):
        """
        HELO and EHLO take an address literal (RFC 5321 4.1.1.1), IPv4 or IPv6, and the
        Received header shows it.
        """
        for helo in (b"HELO [127.0.0.1]", b"EHLO [IPv6:::1]"):
            conversation = Conversation(self)
            self.assertEqual(conversation.codes(helo, b"MAIL FROM:<a@elsewhere.test>",
                                                b"RCPT TO:<bob@example.com>"),
                             [250, 250, 250])
            self.assertEqual(replyCodes(conversation.send(b"DATA", *MESSAGE)), [354, 250])
            [content] = conversation.delivered("bob@example.com")
            self.assertIn(b"Received: from " + helo[5:] + b" ([203.0.113.7])", content)

    def test_addressLiteralRecipient(self):
        """
        With address literals listed in C{domains}, a recipient at one (in any spelling
        of the same address) is accepted and filed under the canonical literal; another
        literal is 550 5.7.1, a malformed one 501.
        """
        conversation = Conversation(self, domains=["example.com", "[127.0.0.1]",
                                                   "[IPv6:::1]"])
        conversation.send(b"EHLO client.test", b"MAIL FROM:<a@elsewhere.test>")
        self.assertTrue(conversation.send(b"RCPT TO:<bob@[127.0.0.1]>").startswith(
            b"250 2.1.5 "))
        self.assertTrue(conversation.send(b"RCPT TO:<carol@[IPv6:0:0::1]>").startswith(
            b"250 2.1.5 "))
        self.assertTrue(conversation.send(b"RCPT TO:<bob@[192.0.2.1]>").startswith(
            b"550 5.7.1 "))
        self.assertEqual(conversation.codes(b"RCPT TO:<bob@[300.1.1.1]>"), [501])
        self.assertEqual(conversation.codes(b"RCPT TO:<bob@[127.0.0.1]> NOTIFY=NEVER"),
                         [555])
        self.assertEqual(replyCodes(conversation.send(b"DATA", *MESSAGE)), [354, 250])
        self.assertEqual(len(conversation.delivered("bob@[127.0.0.1]")), 1)
        self.assertEqual(len(conversation.delivered("carol@[IPv6:::1]")), 1)

    def test_noDirectoryForRefused(self):
        """
        Refused recipients, and accepted ones of a transaction that never sends DATA,
        leave no directory behind; only delivered recipients get a Maildir.
        """
        conversation = Conversation(self)
        conversation.envelope(b"bob@example.com", b"x@elsewhere.test", b"../x@example.com",
                              b"y@[127.0.0.1]")
        conversation.send(b"RSET")
        self.assertFalse(os.path.exists(conversation.base))
        conversation.envelope(b"alice@example.com", b"nobody@elsewhere.test")
        self.assertEqual(replyCodes(conversation.send(b"DATA", *MESSAGE)), [354, 250])
        self.assertEqual(files(conversation.base), [".spool", "example.com"])
        self.assertEqual(files(os.path.join(conversation.base, "example.com")), ["alice"])


def selfSignedCertificate(testCase):
    """
    A self-signed certificate and its key for localhost (PEM files), made by the
    openssl command; skip when it or pyOpenSSL is missing.
    """
    import shutil
    import subprocess
    try:
        import OpenSSL  # noqa: F401
    except ImportError:
        raise SkipTest("STARTTLS needs pyOpenSSL (pip install 'twisted[tls]')")
    if shutil.which("openssl") is None:
        raise SkipTest("making a test certificate needs the openssl command")
    directory = os.path.abspath(testCase.mktemp())
    os.makedirs(directory)
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj",
                    "/CN=localhost", "-days", "1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


class StartTLSTests(TestCase):
    """
    STARTTLS (RFC 3207) with C{tls: {cert, key}}, driven by Python's smtplib.
    """

    timeout = 60

    def serve(self, **options):
        base = os.path.abspath(self.mktemp())
        item = spec("mail", protocol="smtp", port=0, interface="127.0.0.1",
                    options={"domains": ["example.com"], "maildir": base,
                             "hostname": "mx.example.com", **options},
                    providers={"smtp": smtp})
        server = PortServer(makePlan(item), reactor)
        server.startService()
        self.addCleanup(server.stopService)
        return server.addressOf("mail", "tcp").port, base

    @inlineCallbacks
    def test_startTLSThenDeliver(self):
        """
        With a certificate, EHLO advertises STARTTLS; smtplib's C{starttls()} succeeds,
        the EHLO after it no longer offers it, and a message sent over TLS is delivered
        with C{with ESMTPS} in its Received header.
        """
        import smtplib
        import ssl

        cert, key = selfSignedCertificate(self)
        port, base = self.serve(tls={"cert": cert, "key": key})

        def talk():
            context = ssl.create_default_context(cafile=cert)
            context.check_hostname = False
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.ehlo()
                offered = client.has_extn("starttls")
                code, _ = client.starttls(context=context)
                client.ehlo()
                again = client.has_extn("starttls")
                client.sendmail("a@elsewhere.test", ["bob@example.com"],
                                b"Subject: secret\r\n\r\nover TLS\r\n")
            return offered, code, again

        offered, code, again = yield deferToThread(talk)
        self.assertEqual((offered, code, again), (True, 220, False))
        new = os.path.join(base, "example.com", "bob", "new")
        [name] = os.listdir(new)
        with open(os.path.join(new, name), "rb") as f:
            content = f.read()
        self.assertIn(b"with ESMTPS id", content)
        self.assertIn(b"over TLS", content)

    @inlineCallbacks
    def test_notOfferedWithoutCertificate(self):
        """
        Without C{tls}, STARTTLS is not advertised, and asking for it is 454.
        """
        import smtplib
        port, base = self.serve()

        def talk():
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.ehlo()
                return client.has_extn("starttls"), client.docmd("STARTTLS")[0]

        self.assertEqual((yield deferToThread(talk)), (False, 454))

    def test_badCertificateIsAConfigError(self):
        """
        A missing key file, or a key that is not the certificate's, is an option error
        naming the files.
        """
        cert, key = selfSignedCertificate(self)
        from portserver.options import OptionsError
        error = self.assertRaises(OptionsError, smtp.validateOptions, {
            "domains": ["example.com"], "maildir": "m",
            "tls": {"cert": cert, "key": key + ".missing"}})
        self.assertIn("cannot load cert", str(error))
        error = self.assertRaises(OptionsError, smtp.validateOptions, {
            "domains": ["example.com"], "maildir": "m", "tls": {"cert": cert}})
        self.assertIn("must give cert and key", str(error))
