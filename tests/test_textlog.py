"""
Tests for L{portserver.textlog}: twistd's text log, the same text written faster.
"""

import io
import time

from twisted.logger import (
    FileLogObserver,
    LogLevel,
    LogPublisher,
    Logger,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python import log as legacy
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from portserver.logfilter import QuietObserver, quietPortChatter
from portserver.textlog import TextLogObserver, fasterTextLog, twistdTimeFormat

NOW = 1764843253.25  # a quarter past a second


class Shouty:
    """
    A value whose C{__format__} fails: Twisted writes its "Unable to format" text.
    """

    def __format__(self, spec):
        raise RuntimeError("no")

    def __repr__(self):
        return "<Shouty>"


def legacyEvent(text):
    """
    The event C{twisted.python.log.msg(text)} publishes (with C{log_system}).
    """
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        legacy.msg(text, system="echo,3,127.0.0.1")
    finally:
        globalLogPublisher.removeObserver(events.append)
    return events[-1]


def sampleEvents() -> list[dict]:
    """
    Events of every shape twistd's log meets: plain, with fields and conversions and
    specs, multi-line, legacy, failures, missing fields, call syntax, attributes,
    unformattable values, no format, bytes formats, no time, no level.
    """
    base = {"log_namespace": "portserver.protocols.http.StaticSite",
            "log_level": LogLevel.info, "log_time": NOW}
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    shapes = [
        {"log_format": "{access_line}",
         "access_line": 'web 127.0.0.1:4000 "GET / HTTP/1.1" 200 12'},
        {"log_format": "Listening: service {service} on {port!r} ({share:.1%}) {x!s} {y!a}",
         "service": "echo", "port": 7, "share": 0.5, "x": b"b", "y": "é"},
        {"log_format": "two\nlines {n:>5}", "n": 3},
        {"log_format": "{{literal}} braces and {n}", "n": 1},
        {"log_format": "failed: {why}", "why": "x", "log_failure": failure},
        {"log_format": "missing {field}"},
        {"log_format": "call {f()}", "f": lambda: "called"},
        {"log_format": "attribute {a.real} index {b[0]}", "a": 3, "b": [9]},
        {"log_format": "nested {n:{w}}", "n": 1, "w": 4},
        {"log_format": "positional {0}"},
        {"log_format": "broken {"},
        {"log_format": "unformattable {s}", "s": Shouty()},
        {"log_format": ""},
        {"no_format": True},
        {"log_format": b"bytes {n}", "n": 2},
        {"log_format": "no time", "log_time": None},
        {"log_format": "no level", "log_level": None},
        {"log_format": "system {n}", "n": 1, "log_system": "custom"},
        {"log_format": "near the next second", "log_time": 1764843253.9999996},
        {"log_format": "at the second", "log_time": 1764843253.0},
        {"log_format": "later {n}", "n": 5, "log_time": NOW + 3600 * 24 * 180},
    ]
    events = [{**base, **shape} for shape in shapes]
    for event in events:
        if event.get("log_level", 1) is None:
            del event["log_level"]
    events.append(legacyEvent("a legacy line"))
    return events


class SameTextTests(SynchronousTestCase):
    """
    L{TextLogObserver} writes byte for byte what Twisted's C{textFileLogObserver} (as
    twistd makes it) writes.
    """

    def both(self, events, outFile=io.StringIO):
        ours, theirs = outFile(), outFile()
        fast = TextLogObserver(textFileLogObserver(ours))
        stock = textFileLogObserver(theirs)
        for event in events:
            fast(dict(event))
            stock(dict(event))
        return ours.getvalue(), theirs.getvalue()

    def test_everyShape(self):
        """
        For every kind of event, one at a time, the text is Twisted's.
        """
        for event in sampleEvents():
            ours, theirs = self.both([event])
            self.assertEqual(ours, theirs, event.get("log_format"))

    def test_sequence(self):
        """
        A sequence of events across seconds (the cached time stamp) and namespaces (the
        cached system) gives Twisted's text, in a binary file too (UTF-8).
        """
        events = []
        for index in range(50):
            events.append({"log_format": "n={n} é", "n": index,
                           "log_namespace": f"ns{index % 3}",
                           "log_level": (LogLevel.info, LogLevel.warn)[index % 2],
                           "log_time": NOW + index * 0.37})
        ours, theirs = self.both(events)
        self.assertEqual(ours, theirs)
        ours, theirs = self.both(events, io.BytesIO)
        self.assertEqual(ours, theirs)

    def test_throughALogger(self):
        """
        Events made by a real L{Logger} (with its C{log_logger} and C{log_source}), the
        http access-log event among them, give Twisted's text.
        """
        ours, theirs = io.StringIO(), io.StringIO()
        publisher = LogPublisher(TextLogObserver(textFileLogObserver(ours)),
                                 textFileLogObserver(theirs))
        log = Logger(namespace="portserver.protocols.http.StaticSite", observer=publisher)
        log.info("{access_line}", access_line="web 127.0.0.1:1 \"GET / HTTP/1.1\" 200 0",
                 service="web", status=200)
        log.warn("Out of file descriptors ({error}) on {port}", error="EMFILE", port="echo")
        self.assertEqual(ours.getvalue(), theirs.getvalue())
        self.assertIn("[portserver.protocols.http.StaticSite#warn] Out of file descriptors "
                      "(EMFILE) on echo\n", ours.getvalue())

    def test_eachLineFlushed(self):
        """
        Each event is written and flushed at once, as Twisted's observer does: nothing
        waits in a buffer of its own.
        """
        calls = []

        class File(io.StringIO):
            def flush(self):
                calls.append(self.getvalue().count("\n"))

        observer = TextLogObserver(textFileLogObserver(File()))
        for n in range(3):
            observer({"log_format": "{n}", "n": n, "log_time": time.time()})
        self.assertEqual(calls, [1, 2, 3])


class ReplacingTests(SynchronousTestCase):
    """
    Only twistd's own text file observer is replaced.
    """

    def test_twistdsObserver(self):
        """
        C{textFileLogObserver}'s observer (twistd's) is recognised, with its time format;
        others are not, and L{fasterTextLog} leaves them as they are.
        """
        stock = textFileLogObserver(io.StringIO())
        self.assertEqual(twistdTimeFormat(stock), "%Y-%m-%dT%H:%M:%S%z")
        self.assertIsInstance(fasterTextLog(stock), TextLogObserver)
        other = textFileLogObserver(io.StringIO(), timeFormat="%H:%M")
        custom = FileLogObserver(io.StringIO(), lambda event: "x\n")
        for observer in (other, custom, print):
            self.assertIsNone(twistdTimeFormat(observer))
            self.assertIs(fasterTextLog(observer), observer)

    def test_quietPortChatterReplaces(self):
        """
        L{quietPortChatter} puts a L{TextLogObserver} (behind the chatter filter) in the
        place of twistd's observer, which sees the same lines.
        """
        out = io.StringIO()
        publisher = LogPublisher(textFileLogObserver(out))
        quietPortChatter(publisher)
        [observer] = publisher._observers
        self.assertIsInstance(observer, QuietObserver)
        self.assertIsInstance(observer.observer, TextLogObserver)
        publisher({"log_format": "hello {who}", "who": "world", "log_time": NOW,
                   "log_namespace": "t", "log_level": LogLevel.info})
        self.assertTrue(out.getvalue().endswith(" [t#info] hello world\n"), out.getvalue())
