"""
Tests for L{portserver.logfilter}: Twisted's port chatter kept out of the log.
"""

from twisted.logger import LogLevel, LogPublisher, globalLogPublisher
from twisted.python import log as legacy
from twisted.trial.unittest import SynchronousTestCase

from portserver.logfilter import isPortChatter, quietPortChatter


def legacyEvent(text, isError=0):
    """
    The event C{twisted.python.log.msg(text)} publishes.
    """
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        if isError:
            legacy.err(RuntimeError(text), text)
        else:
            legacy.msg(text)
    finally:
        globalLogPublisher.removeObserver(events.append)
    return events[-1]


class PortChatterTests(SynchronousTestCase):
    """
    Only Twisted's own port open and close lines are chatter.
    """

    def test_twistedsPortLines(self):
        """
        The lines C{tcp.Port} and C{udp.Port} log on open and close are chatter.
        """
        for text in ("echo starting on 10007", "QuietSite starting on 8080",
                     "(TCP Port 10007 Closed)", "(UDP Port 7 Closed)"):
            self.assertTrue(isPortChatter(legacyEvent(text)), text)

    def test_everythingElseKept(self):
        """
        Other legacy lines, errors, and portserver's own events are not.
        """
        self.assertFalse(isPortChatter(legacyEvent("echo starting on 10007, again")))
        self.assertFalse(isPortChatter(legacyEvent("Main loop terminated.")))
        self.flushLoggedErrors(RuntimeError)
        self.assertFalse(isPortChatter({"log_namespace": "portserver.listeners",
                                        "log_level": LogLevel.info,
                                        "log_text": "echo starting on 7"}))

    def test_quietWrapsEachObserverOnce(self):
        """
        After L{quietPortChatter}, a publisher's observers no longer see chatter but
        see everything else; a second call wraps nothing again.
        """
        seen = []
        publisher = LogPublisher(seen.append)
        quietPortChatter(publisher)
        quietPortChatter(publisher)
        publisher(legacyEvent("echo starting on 10007"))
        publisher(legacyEvent("something else"))
        self.assertEqual([e["log_text"] for e in seen], ["something else"])
