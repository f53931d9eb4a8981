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

from twisted.logger import FilteringLogObserver, LogLevel, PredicateResult, globalLogPublisher

_CHATTER = re.compile(r"\S+ starting on \d+|\((?:TCP|UDP) Port \d+ Closed\)")


def isPortChatter(event: dict) -> bool:
    """
    Whether C{event} is one of Twisted's port open/close lines (a legacy, non-error
    info event whose whole text is one of them).
    """
    return (event.get("log_namespace") == "log_legacy" and not event.get("isError")
            and event.get("log_level") == LogLevel.info
            and _CHATTER.fullmatch(event.get("log_text") or "") is not None)


def _predicate(event: dict) -> PredicateResult:
    return PredicateResult.no if isPortChatter(event) else PredicateResult.maybe


def quietPortChatter(publisher=globalLogPublisher) -> None:
    """
    Wrap each observer of C{publisher} in a filter that drops L{isPortChatter} events.

    Call once, after twistd has begun logging (its observers are in place by
    C{privilegedStartService}) and never under trial: the test runner's own observers
    must stay the objects it later removes. twistd gives a plugin no public handle on
    the observer it makes, so this reads the publisher's list of observers.
    """
    for observer in list(getattr(publisher, "_observers", ())):
        if isinstance(observer, FilteringLogObserver):
            continue
        publisher.removeObserver(observer)
        publisher.addObserver(FilteringLogObserver(observer, [_predicate]))
