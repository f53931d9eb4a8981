"""
YAML loading that keeps where each key and value stood, for error messages.

L{load} is C{yaml.safe_load} (the same L{yaml.SafeLoader}, so the same safety) except that
mappings and sequences come back as L{MarkedMap} and L{MarkedList}, which remember the line
and column of each entry, and that a key given twice in one mapping is reported instead of
silently keeping the last value.
"""

from __future__ import annotations

import attrs
import yaml


@attrs.frozen
class Mark:
    """
    A place in a file, 1-based, as editors number lines and columns.
    """

    line: int
    column: int

    @classmethod
    def fromYAML(cls, mark) -> "Mark":
        return cls(mark.line + 1, mark.column + 1)


class MarkedMap(dict):
    """
    A mapping from YAML that knows where it, each of its keys and each value started.
    """

    mark: Mark = Mark(1, 1)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.keyMarks: dict = {}
        self.valueMarks: dict = {}

    def keyMark(self, key) -> Mark:
        return self.keyMarks.get(key, self.mark)

    def valueMark(self, key) -> Mark:
        return self.valueMarks.get(key, self.mark)


class MarkedList(list):
    """
    A sequence from YAML that knows where it and each item started.
    """

    mark: Mark = Mark(1, 1)

    def __init__(self, *args):
        super().__init__(*args)
        self.marks: list[Mark] = []

    def itemMark(self, index: int) -> Mark:
        return self.marks[index] if index < len(self.marks) else self.mark


def markOf(value, default: Mark) -> Mark:
    """
    Where C{value} started, if it is a marked container, else C{default}.
    """
    return getattr(value, "mark", default)


@attrs.frozen
class YAMLProblem:
    """
    Something wrong in the YAML itself, at C{mark}.
    """

    mark: Mark
    message: str


class _Loader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self.problems: list[YAMLProblem] = []


def _constructMapping(loader: _Loader, node):
    loader.flatten_mapping(node)
    result = MarkedMap()
    result.mark = Mark.fromYAML(node.start_mark)
    for keyNode, valueNode in node.value:
        key = loader.construct_object(keyNode, deep=True)
        keyMark = Mark.fromYAML(keyNode.start_mark)
        try:
            hash(key)
        except TypeError:
            loader.problems.append(YAMLProblem(keyMark, "a mapping key must be a plain value"))
            continue
        if key in result:
            first = result.keyMarks[key]
            loader.problems.append(YAMLProblem(
                keyMark, f"duplicate key {key!r} (first given at line {first.line})"))
            continue
        result[key] = loader.construct_object(valueNode, deep=True)
        result.keyMarks[key] = keyMark
        result.valueMarks[key] = Mark.fromYAML(valueNode.start_mark)
    return result


def _constructSequence(loader: _Loader, node):
    result = MarkedList(loader.construct_object(child, deep=True) for child in node.value)
    result.mark = Mark.fromYAML(node.start_mark)
    result.marks = [Mark.fromYAML(child.start_mark) for child in node.value]
    return result


_Loader.add_constructor("tag:yaml.org,2002:map", _constructMapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _constructSequence)


def load(text: str):
    """
    Load one YAML document from C{text}.

    @return: C{(data, problems)}: the data (L{None} for an empty document) and a list of
        L{YAMLProblem}; when the YAML cannot be parsed at all, C{data} is L{None} and the
        problems say where it broke.
    """
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as e:  # a character YAML does not allow, anywhere
        before = text[:e.position] if isinstance(e.position, int) else ""
        where = Mark(before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1)
        return None, [YAMLProblem(where, f"invalid YAML: character {e.character:#06x} is not "
                                         "allowed (YAML allows printable characters, tab "
                                         "and line breaks)")]
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = Mark.fromYAML(mark) if mark is not None else Mark(1, 1)
        message = " ".join(part for part in (e.context, e.problem) if part)
        return None, [YAMLProblem(where, f"invalid YAML: {message}")]
    except yaml.YAMLError as e:
        return None, [YAMLProblem(Mark(1, 1), f"invalid YAML: {e}")]
    finally:
        loader.dispose()
    return data, loader.problems
