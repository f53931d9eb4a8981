"""
Repeated errors, logged at a bounded rate.

One broken plugin, full disk or failing program can raise the same error for every
connection, thousands a second; a traceback each time floods the log and costs more CPU
than serving. L{RepeatedErrors} logs an error with its traceback once per cause per
interval, counts the rest, and says how many there were with the next line of that cause,
as the refusals of L{portserver.admission} are reported.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable

from twisted.python.failure import Failure

#: Seconds between two lines of one cause.
REPORT_INTERVAL = 10.0
#: Causes remembered at once (the least recently logged are forgotten first).
MAX_CAUSES = 1000


def causeOf(failure: Failure, *context: Hashable) -> tuple:
    """
    What makes two failures "the same error": C{context} (e.g. the service and where
    it happened), the exception type, and the place it was raised.
    """
    frames = failure.frames
    place = tuple(frames[-1][1:3]) if frames else None
    return (*context, failure.type, place)


class RepeatedErrors:
    """
    Log errors through C{log}, at most one line per cause per C{interval} seconds of
    C{clock}; the lines in between are counted, and the next line of that cause says how
    many were left out.
    """

    def __init__(self, log, clock, interval: float = REPORT_INTERVAL,
                 maxCauses: int = MAX_CAUSES):
        self.log = log
        self.clock = clock
        self.interval = interval
        self.maxCauses = maxCauses
        self._causes: OrderedDict[Hashable, list] = OrderedDict()

    def _due(self, cause: Hashable) -> int | None:
        """
        The number left out since the last line of C{cause} when a line is due now,
        else L{None} (and this one is counted).
        """
        now = self.clock.seconds()
        entry = self._causes.get(cause)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return None
        suppressed = 0 if entry is None else entry[1]
        self._causes[cause] = [now, 0]
        self._causes.move_to_end(cause)
        if len(self._causes) > self.maxCauses:
            self._causes.popitem(last=False)
        return suppressed

    def failure(self, cause: Hashable, format: str, failure: Failure | None = None,
                **kwargs) -> bool:
        """
        C{log.failure(format, failure, **kwargs)} unless C{cause} was logged less than
        the interval ago. A line after some were left out ends with their count
        (C{suppressed} in the event).

        @return: whether a line was logged.
        """
        suppressed = self._due(cause)
        if suppressed is None:
            return False
        if suppressed:
            format += " ({suppressed} more like it since the last report)"
        self.log.failure(format, failure, suppressed=suppressed, **kwargs)
        return True

    def error(self, cause: Hashable, format: str, **kwargs) -> bool:
        """
        C{log.error(format, **kwargs)}, at the same bounded rate as L{failure}.
        """
        suppressed = self._due(cause)
        if suppressed is None:
            return False
        if suppressed:
            format += " ({suppressed} more like it since the last report)"
        self.log.error(format, suppressed=suppressed, **kwargs)
        return True
