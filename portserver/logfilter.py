"""
Twisted's own port chatter, kept out of portserver's log.

Twisted logs each port it opens and closes (C{echo starting on 10007}, C{QuietSite
starting on 8080}, C{(TCP Port 10007 Closed)}), through the legacy C{log.msg}, whatever
the factory's C{noisy} says. portserver announces each listener once, in its own words
(C{Listening: service echo ...}), so under twistd these lines only repeat it. Errors are
never filtered.
"""

from __future__ import annotations

import re

from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from zope.interface import implementer

from portserver.textlog import fasterTextLog

_CHATTER = re.compile(r"\S+ starting on \d+|\((?:TCP|UDP) Port \d+ Closed\)")


def isPortChatter(event: dict) -> bool:
    """
    Whether C{event} is one of Twisted's port open/close lines (a legacy, non-error
    info event whose whole text is one of them).
    """
    return (event.get("log_namespace") == "log_legacy" and not event.get("isError")
            and event.get("log_level") == LogLevel.info
            and _CHATTER.fullmatch(event.get("log_text") or "") is not None)


@implementer(ILogObserver)
class QuietObserver:
    """
    Passes every event but L{isPortChatter}'s to C{observer}. (Twisted's
    C{FilteringLogObserver} does the same through predicates and their results, at a
    cost on every event: the http access log makes one per request.)
    """

    def __init__(self, observer):
        self.observer = observer

    def __call__(self, event: dict) -> None:
        if event.get("log_namespace") == "log_legacy" and isPortChatter(event):
            return
        self.observer(event)


def quietPortChatter(publisher=globalLogPublisher) -> None:
    """
    Wrap each observer of C{publisher} in a L{QuietObserver}; twistd's text file
    observer is replaced by a L{portserver.textlog.TextLogObserver}, which writes the
    same lines faster.

    Call once, after twistd has begun logging (its observers are in place by
    C{privilegedStartService}) and never under trial: the test runner's own observers
    must stay the objects it later removes. twistd gives a plugin no public handle on
    the observer it makes, so this reads the publisher's list of observers.
    """
    for observer in list(getattr(publisher, "_observers", ())):
        if isinstance(observer, QuietObserver):
            continue
        publisher.removeObserver(observer)
        publisher.addObserver(QuietObserver(fasterTextLog(observer)))
