"""
Byte ranges and validators for the C{http} protocol (RFC 9110 §8.8, §13, §14): which part
of a file a request gets, decided from its C{Range}, C{If-Range}, C{If-None-Match} and
C{If-Modified-Since} headers and the file's length, entity tag and modification time.

Plain functions of bytes and numbers: L{portserver.protocols.http} applies them to
requests. They exist because C{twisted.web.static.File} sends every range as asked: 200
copies of a 100 MB file for a 600-byte C{Range: bytes=0-,0-,...} header.
"""

from __future__ import annotations

import re

from twisted.web.http import stringToDatetime

#: More ranges than this in one C{Range} header: the whole file is sent (as nginx's
#: C{max_ranges}).
MAX_RANGES = 100

_SPEC = re.compile(rb"(\d*)-(\d*)")
_TAG = re.compile(rb'\s*(W/)?("[^"]*")\s*(,|$)')


def parseRange(value: bytes) -> list[tuple[int | None, int | None]] | None:
    """
    The C{(first, last)} pairs of a C{Range: bytes=...} header value (either may be
    L{None}, not both), or L{None} when it is not a byte range set this server
    understands (another unit, bad syntax, more than L{MAX_RANGES} ranges): then the
    header is ignored (RFC 9110 §14.2).
    """
    unit, separator, spec = value.partition(b"=")
    if not separator or unit.strip().lower() != b"bytes":
        return None
    ranges = []
    for item in spec.split(b","):
        item = item.strip(b" \t")
        if not item:  # empty list elements are allowed (RFC 9110 §5.6.1)
            continue
        match = _SPEC.fullmatch(item)
        if match is None:
            return None
        first = int(match.group(1)) if match.group(1) else None
        last = int(match.group(2)) if match.group(2) else None
        if first is None and last is None:
            return None
        if first is not None and last is not None and last < first:
            return None
        ranges.append((first, last))
    if not ranges or len(ranges) > MAX_RANGES:
        return None
    return ranges


def resolve(ranges, size: int) -> list[tuple[int, int]]:
    """
    The satisfiable ones of C{ranges} (from L{parseRange}) on a file of C{size} bytes, as
    C{(start, end)} offsets, C{end} exclusive, in the order given. A suffix range longer
    than the file is the whole file (RFC 9110 §14.1.2).
    """
    spans = []
    for first, last in ranges:
        if first is None:
            if last == 0 or size == 0:
                continue
            spans.append((max(0, size - last), size))
        elif first < size:
            spans.append((first, size if last is None else min(last + 1, size)))
    return spans


def coalesce(spans) -> list[tuple[int, int]]:
    """
    C{spans} sorted, with the overlapping and adjacent ones merged (RFC 9110 §14.3
    allows it, whatever the order they were asked in).
    """
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def plan(value: bytes, size: int) -> list[tuple[int, int]] | None:
    """
    What to send for C{Range: value} on a file of C{size} bytes: L{None} for the whole
    file with a 200 (the header ignored, or the ranges asking for more bytes than the
    file has, as nginx decides), an empty list for a 416, else the coalesced C{(start,
    end)} spans of a 206.
    """
    ranges = parseRange(value)
    if ranges is None:
        return None
    spans = resolve(ranges, size)
    if not spans:
        return []
    if sum(end - start for start, end in spans) > size:
        return None
    return coalesce(spans)


def strongETag(size: int, mtimeNs: int) -> bytes:
    """
    A strong entity tag for a file of C{size} bytes last modified at C{mtimeNs}
    (nanoseconds): it changes whenever either does, as nginx's does (which uses seconds).
    """
    return b'"%x-%x"' % (mtimeNs, size)


def _tags(value: bytes) -> list[tuple[bool, bytes]] | None:
    """
    The C{(weak, opaque-tag)} pairs of an entity-tag list, or L{None} if it is malformed.
    """
    tags = []
    position = 0
    while position < len(value):
        match = _TAG.match(value, position)
        if match is None:
            if not value[position:].strip(b" \t,"):
                break
            return None
        tags.append((match.group(1) is not None, match.group(2)))
        position = match.end()
    return tags


def noneMatch(values: list[bytes], etag: bytes) -> bool:
    """
    Whether C{If-None-Match} (all its field lines, C{values}) matches C{etag}: C{*}, or
    a tag equal by the weak comparison (RFC 9110 §13.1.2). A malformed list matches
    nothing.
    """
    for value in values:
        if value.strip() == b"*":
            return True
        tags = _tags(value)
        if tags and any(opaque == etag for _, opaque in tags):
            return True
    return False


def parseDate(value: bytes) -> int | None:
    """
    The seconds since the epoch of an HTTP-date, or L{None} if it is not one.
    """
    try:
        return stringToDatetime(value.split(b";", 1)[0].strip())
    except (ValueError, IndexError, KeyError, OverflowError):  # whatever garbage it was
        return None


def modifiedSince(value: bytes, lastModified: int, now: float) -> bool:
    """
    Whether C{If-Modified-Since: value} lets the file (last modified at C{lastModified},
    whole seconds) be sent: yes unless the date is valid, not in the future (after
    C{now}), and not before C{lastModified} (RFC 9110 §13.1.3).
    """
    when = parseDate(value)
    if when is None or when > now:
        return True
    return lastModified > when


def rangeStillValid(value: bytes, etag: bytes, lastModified: int, now: float) -> bool:
    """
    Whether C{If-Range: value} lets the C{Range} apply (RFC 9110 §13.1.5): an entity tag
    must be strong and equal to C{etag}; a date must equal C{lastModified} exactly, and
    be a strong validator (at least a second before C{now}).
    """
    value = value.strip()
    if value.startswith(b'"') or value.startswith(b"W/"):
        return value == etag
    when = parseDate(value)
    return when is not None and when == lastModified and lastModified <= now - 1
