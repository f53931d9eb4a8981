"""
Tests for L{portserver.tracking.Timeouts}: the idle timeouts and deadlines of a
listener's connections on one call.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from portserver.tracking import Timeouts


class Connection:
    """
    A connection whose limit passes at C{due} (or later, once C{active} moves it on).
    """

    def __init__(self, due: float):
        self.due = due
        self.closedAt = None
        self.asked = 0

    def _isOpen(self) -> bool:
        return self.closedAt is None

    def _timeLeft(self, now: float):
        self.asked += 1
        if now >= self.due:
            self.closedAt = now
            return None
        return self.due - now


class TimeoutsTests(SynchronousTestCase):
    """
    One call for many connections, each closed at its own time.
    """

    def setUp(self):
        self.clock = Clock()
        self.connections = {}
        self.timeouts = Timeouts(self.clock, self.connections)

    def add(self, serial: int, due: float) -> Connection:
        connection = self.connections[serial] = Connection(due)
        self.timeouts.add(due, serial)
        return connection

    def test_oneCallForMany(self):
        """
        However many connections wait, one call is pending, for the earliest.
        """
        for serial in range(100):
            self.add(serial, 10.0 + serial)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), 10.0)

    def test_exactTimes(self):
        """
        Each connection is closed exactly when its limit passes, not before, also when
        an earlier one is added after a later one.
        """
        late = self.add(1, 30.0)
        early = self.add(2, 10.0)
        self.clock.advance(9.999)
        self.assertEqual((early.closedAt, late.closedAt), (None, None))
        self.clock.advance(0.001)
        self.assertEqual((early.closedAt, late.closedAt), (10.0, None))
        self.clock.advance(20.0)
        self.assertEqual(late.closedAt, 30.0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_exactTimesOffTheGrid(self):
        """
        Times that are no multiple of the heap's resolution, at the scale of the
        epoch, still close each connection when its clock reaches its time, also the
        second one, whose call is made from the heap's rounded entry.
        """
        self.clock.advance(1_796_371_609.4023864)
        start = self.clock.seconds()
        first = self.add(1, start + 0.1)
        second = self.add(2, start + 0.3)
        self.clock.advance(0.1)
        self.assertEqual((first.closedAt, second.closedAt), (start + 0.1, None))
        self.clock.advance(0.2)
        self.assertIsNotNone(second.closedAt)
        self.assertAlmostEqual(second.closedAt, start + 0.3, delta=Timeouts.RESOLUTION)
        self.assertEqual(second.asked, 1)

    def test_activityMovesOn(self):
        """
        A connection active since its entry was made is asked at the old time, and
        again when its limit really passes.
        """
        connection = self.add(1, 10.0)
        connection.due = 25.0  # active at 15 with a 10 s idle timeout
        self.clock.advance(10.0)
        self.assertEqual((connection.closedAt, connection.asked), (None, 1))
        self.clock.advance(15.0)
        self.assertEqual((connection.closedAt, connection.asked), (25.0, 2))

    def test_closedSkipped(self):
        """
        The entry of a connection gone meanwhile is dropped without asking it.
        """
        connection = self.add(1, 10.0)
        del self.connections[1]
        self.clock.advance(10.0)
        self.assertEqual(connection.asked, 0)

    def test_boundedUnderChurn(self):
        """
        Connections that come and go by the thousand, each leaving its entry, never let
        the heap grow past about twice the live connections.
        """
        for serial in range(10000):
            self.add(serial, 300.0)
            del self.connections[serial]
        self.assertLess(len(self.timeouts.heap), 100)

    def test_stop(self):
        """
        C{stop} cancels the call.
        """
        self.add(1, 10.0)
        self.timeouts.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
