"""
Tests for L{portserver.ratelog}: repeated errors logged at a bounded rate.
"""

from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from portserver.ratelog import RepeatedErrors, causeOf


def raised(kind=ValueError):
    try:
        raise kind("x")
    except kind:
        return Failure()


class RepeatedErrorsTests(SynchronousTestCase):
    """
    One line per cause per interval, the rest counted.
    """

    def setUp(self):
        self.events = []
        self.clock = Clock()
        self.errors = RepeatedErrors(Logger(observer=self.events.append), self.clock,
                                     interval=10, maxCauses=3)

    def test_oncePerInterval(self):
        """
        The first error of a cause is logged; those within the interval are counted; the
        first after it is logged with the count.
        """
        self.assertTrue(self.errors.error("disk", "disk full"))
        self.assertFalse(self.errors.error("disk", "disk full"))
        self.clock.advance(5)
        self.assertFalse(self.errors.error("disk", "disk full"))
        self.clock.advance(5)
        self.assertTrue(self.errors.error("disk", "disk full"))
        self.assertEqual([formatEvent(e) for e in self.events],
                         ["disk full", "disk full (2 more like it since the last report)"])

    def test_causesApart(self):
        """
        Each cause has its own interval.
        """
        self.assertTrue(self.errors.error("a", "a"))
        self.assertTrue(self.errors.error("b", "b"))
        self.assertFalse(self.errors.error("a", "a"))

    def test_failureKeepsTheTraceback(self):
        """
        L{RepeatedErrors.failure} logs the failure itself (for its traceback).
        """
        failure = raised()
        self.errors.failure(causeOf(failure, "svc"), "broke in {where}", failure,
                            where="dataReceived")
        [event] = self.events
        self.assertIs(event["log_failure"], failure)
        self.assertEqual(formatEvent(event), "broke in dataReceived")

    def test_causeOf(self):
        """
        The cause is the context, the exception type and where it was raised: the same
        line raising twice is one cause, another type or another context is not.
        """
        self.assertEqual(causeOf(raised(), "svc"), causeOf(raised(), "svc"))
        self.assertNotEqual(causeOf(raised(), "svc"), causeOf(raised(), "other"))
        self.assertNotEqual(causeOf(raised(ValueError), "svc"),
                            causeOf(raised(KeyError), "svc"))

    def test_boundedMemory(self):
        """
        At most C{maxCauses} causes are remembered; the oldest is forgotten (and so is
        logged again at once).
        """
        for cause in "abcd":
            self.errors.error(cause, cause)
        self.assertEqual(len(self.errors._causes), 3)
        self.assertTrue(self.errors.error("a", "a"))
