"""
The rot13 protocol, tested the way portserver serves it, with L{portserver.testing}.
"""

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from portserver.config import ConfigError
from portserver.interfaces import IPortProtocol
from portserver.testing import ServiceHarness
from portserver_rot13.protocol import rot13

PEER = ("203.0.113.5", 40001)


class Rot13Tests(SynchronousTestCase):
    """
    One rot13 service, connections from chosen peers.
    """

    def test_provider(self):
        """
        The plugin provides portserver's interface, over TCP.
        """
        self.assertTrue(verifyObject(IPortProtocol, rot13))
        self.assertEqual(rot13.transports, frozenset({"tcp"}))

    def test_greetsThePeer(self):
        """
        A client is greeted with its own (ip, port).
        """
        conn = ServiceHarness(rot13).connect(peer=PEER)
        self.assertEqual(conn.received(), b"rot13 ready for 203.0.113.5:40001\n")

    def test_rotates(self):
        """
        Each line comes back ROT13-ed after the prefix (CRLF or LF), and the registry
        counts the bytes both ways.
        """
        harness = ServiceHarness(rot13, "prefix: '> '\ngreet: false\n")
        conn = harness.connect(peer=PEER)
        conn.send(b"Hello\r\nworld\n")
        self.assertEqual(conn.received(), b"> Uryyb\n> jbeyq\n")
        self.assertEqual((conn.record.bytesIn, conn.record.bytesOut), (13, 16))

    def test_recorded(self):
        """
        While connected the registry shows the pair; after the client leaves, the record
        says it closed the connection.
        """
        harness = ServiceHarness(rot13, port=7013)
        conn = harness.connect(peer=PEER)
        [live] = harness.live()
        self.assertEqual((live.remote, live.local), (PEER, ("127.0.0.1", 7013)))
        conn.close()
        self.assertEqual(harness.live(), [])
        [closed] = harness.closed()
        self.assertEqual(closed.reason, "client-closed")

    def test_lineTooLong(self):
        """
        A line longer than C{max_line} gets an error and the server closes the connection.
        """
        harness = ServiceHarness(rot13, {"max_line": 8, "greet": False})
        conn = harness.connect()
        conn.send(b"x" * 20)
        self.assertEqual(conn.received(), b"error: line too long\n")
        self.assertTrue(conn.serverClosed)
        conn.close()
        self.assertEqual(harness.closed()[0].reason, "server-closed")

    def test_badOptions(self):
        """
        Bad options are refused as the server's --check refuses them, naming the option
        and the line.
        """
        with self.assertRaises(ConfigError) as caught:
            ServiceHarness(rot13, "greet: false\nmax_line: 0\n")
        [problem] = caught.exception.problems
        self.assertEqual(problem.mark.line, 2)
        self.assertIn("option 'max_line': must be 1-65536", str(problem))
