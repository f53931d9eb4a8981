"""
twistd's text log, written with the same text at a fraction of the cost.

twistd logs to a file through C{twisted.logger.textFileLogObserver}: for every event
it works out the local time zone and formats the time stamp (two C{datetime}s and a
C{strftime}), formats C{"{namespace}#{level}"}, parses the event's format string, and
writes and flushes the line. That is about 25 µs an event on this machine; the http
service logs one event per request, so a third of a small request's cost was its line in
twistd's log (see C{bench/README.md}).

L{TextLogObserver} writes the very same line to the same file, one write and flush per
event as before, and keeps what does not change between events: the time stamp of the
current second, the C{[system]} prefix of each namespace and level, the parsed form of
each format string. An event it cannot be sure to format as Twisted would (a failure and
its traceback, a flattened event, a field with an attribute, an index or a call, a nested
format specification, a missing field) goes to Twisted's own observer, unchanged.
"""

from __future__ import annotations

import math
from string import Formatter

from twisted.logger import FileLogObserver, ILogObserver, formatTime, timeFormatRFC3339
from zope.interface import implementer

_parse = Formatter().parse

#: A parsed format string that L{TextLogObserver} leaves to Twisted's formatting.
_UNSURE = object()


def _plan(text: str):
    """
    C{text}, a format string, as a tuple of literal text and C{(name, conversion,
    spec)} fields, or L{_UNSURE} when a field is more than a plain name (an attribute,
    an index, a call, a position) or its spec holds a field of its own.
    """
    parts = []
    try:
        for literal, name, spec, conversion in _parse(text):
            if literal:
                parts.append(literal)
            if name is None:
                continue
            if not name.isidentifier() or "{" in spec or conversion not in (None, "r", "s", "a"):
                return _UNSURE
            parts.append((name, conversion, spec))
    except ValueError:
        return _UNSURE  # malformed: Twisted's own text says so
    return tuple(parts)


def twistdTimeFormat(observer) -> str | None:
    """
    The time format of C{observer} if it is what C{textFileLogObserver} makes (what
    twistd logs to a file through), else L{None}.
    """
    if type(observer) is not FileLogObserver:
        return None
    formatEvent = getattr(observer, "formatEvent", None)
    code = getattr(formatEvent, "__code__", None)
    if (getattr(formatEvent, "__qualname__", "") != "textFileLogObserver.<locals>.formatEvent"
            or code is None or code.co_freevars != ("timeFormat",)):
        return None
    timeFormat = formatEvent.__closure__[0].cell_contents
    return timeFormat if timeFormat == timeFormatRFC3339 else None


@implementer(ILogObserver)
class TextLogObserver:
    """
    Writes what twistd's text file observer C{fallback} writes, for the events it can
    format as Twisted does (see the module's docstring); the rest go to C{fallback}.
    """

    def __init__(self, fallback: FileLogObserver):
        self.fallback = fallback
        self._outFile = fallback._outFile
        self._encoding = fallback._encoding
        self._second = None
        self._stamp = ""
        self._systems: dict = {}
        self._plans: dict = {}

    def _timeStamp(self, when) -> str:
        if when is None:
            return "-"
        second = math.floor(when)
        if when - second >= 0.9999995:
            # datetime rounds to the microsecond: this one may be the next second's.
            return formatTime(when, timeFormatRFC3339)
        if second != self._second:
            self._stamp = formatTime(second, timeFormatRFC3339)
            self._second = second
        return self._stamp

    def _system(self, event) -> str:
        system = event.get("log_system")
        if system is not None:
            return f"[{system}] "
        key = (event.get("log_namespace", "-"), event.get("log_level"))
        system = self._systems.get(key)
        if system is None:
            level = key[1]
            system = f"[{key[0]}#{'-' if level is None else level.name}] "
            if len(self._systems) < 1024:
                self._systems[key] = system
        return system

    def format(self, event) -> str | None:
        """
        The line Twisted's observer would write for C{event}, or L{None} when it is
        left to Twisted's (see the module's docstring).
        """
        text = event.get("log_format")
        if type(text) is not str or "log_failure" in event or "log_flattened" in event:
            return None
        plan = self._plans.get(text)
        if plan is None:
            plan = _plan(text)
            if len(self._plans) < 4096:
                self._plans[text] = plan
        if plan is _UNSURE:
            return None
        out = []
        for part in plan:
            if type(part) is str:
                out.append(part)
                continue
            name, conversion, spec = part
            if name not in event:
                return None
            value = event[name]
            if conversion == "r":
                value = repr(value)
            elif conversion == "s":
                value = str(value)
            elif conversion == "a":
                value = ascii(value)
            out.append(format(value, spec))
        message = "".join(out)
        if not message:
            return None  # Twisted's writes nothing: let it say so
        line = f"{self._timeStamp(event.get('log_time'))} {self._system(event)}{message}"
        return line.replace("\n", "\n\t") + "\n"

    def __call__(self, event) -> None:
        try:
            line = self.format(event)
        except Exception:
            line = None  # Twisted's observer writes its own text for what fails here
        if line is None:
            self.fallback(event)
            return
        out = self._outFile
        out.write(line if self._encoding is None else line.encode(self._encoding))
        out.flush()


def fasterTextLog(observer):
    """
    A L{TextLogObserver} for C{observer} if it is twistd's text file observer; else
    C{observer}.
    """
    if twistdTimeFormat(observer) is None:
        return observer
    return TextLogObserver(observer)
