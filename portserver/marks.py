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


#: How many values a document may hold once every alias is expanded, and how deep its
#: collections may nest: a config is a few hundred values a few levels deep. A document
#: past either (a "billion laughs" of nested aliases: 601 bytes that expand to 10^9
#: values) is refused before anything walks it.
MAX_VALUES = 100_000
MAX_DEPTH = 64
#: The most digits a whole number may have (ports, bytes and seconds need far fewer).
MAX_DIGITS = 30


class DocumentTooLarge(Exception):
    """
    A document past L{MAX_VALUES} or L{MAX_DEPTH}; C{mark} is where, C{message} what.
    """

    def __init__(self, mark, message: str):
        super().__init__(message)
        self.mark = mark
        self.message = message


class _Loader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self.problems: list[YAMLProblem] = []

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        _measure(node)
        return self.construct_document(node)


def _measure(root) -> None:
    """
    Count the values of the node tree at C{root} as if every alias were expanded (each
    node once, its size remembered, so the count costs the size of the file, not of the
    expansion), and its depth; raise L{DocumentTooLarge} past the bounds.
    """
    sizes: dict[int, int] = {}
    stack = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        if id(node) in sizes and not done:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = 1
            continue
        children = ([v for pair in node.value for v in pair]
                    if isinstance(node, yaml.MappingNode) else list(node.value))
        if done:
            size = 1 + sum(sizes[id(child)] for child in children)
            if size > MAX_VALUES:
                raise DocumentTooLarge(node.start_mark, (
                    f"the document holds more than {MAX_VALUES:,} values once its aliases "
                    "are expanded (nested aliases, as in a \"billion laughs\"): a config "
                    "needs no such thing"))
            sizes[id(node)] = size
            continue
        if depth > MAX_DEPTH:
            raise DocumentTooLarge(node.start_mark, (
                f"lists and mappings nest more than {MAX_DEPTH} deep here"))
        sizes[id(node)] = 0  # on the way: an alias to it from inside is a cycle
        stack.append((node, depth, True))
        for child in children:
            if id(child) not in sizes:
                stack.append((child, depth + 1, False))
            elif sizes[id(child)] == 0:
                raise DocumentTooLarge(child.start_mark,
                                       "an alias refers to a collection that holds it")


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


def _constructInt(loader: _Loader, node):
    digits = sum(c.isdigit() for c in node.value)
    if digits > MAX_DIGITS:
        loader.fatal = True  # its value is not known: checking it further would mislead
        loader.problems.append(YAMLProblem(
            Mark.fromYAML(node.start_mark),
            f"a number of {digits} digits: numbers here have at most {MAX_DIGITS}"))
        return 0
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_Loader.add_constructor("tag:yaml.org,2002:map", _constructMapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _constructSequence)
_Loader.add_constructor("tag:yaml.org,2002:int", _constructInt)


#: PyYAML's words for what went wrong (its C{problem}, and sometimes its C{context}),
#: and what they usually mean in a hand-written config.
_EXPLAINED = (
    ("found character '\\t' that cannot start any token",
     "a tab character: YAML indents with spaces only; replace the tab with spaces"),
    ("that cannot start any token",
     "a value that cannot start with this character (such as %, @ or `): put the value "
     "in quotes"),
    ("could not determine a constructor",
     "a YAML tag (!!python/..., !name) that a config cannot use: remove it, or quote the "
     "value if the ! is part of it"),
    ("while parsing a flow node",
     "a block item (`- ...` or `key: value` on its own line) inside a [list] or {mapping} "
     "written inline: use one form or the other"),
    ("mapping values are not allowed here",
     "a colon where none can be: a key needs a space after its colon (`name: echo`, not "
     "`name:echo`), the line may be indented deeper than the key above it, or a value "
     "that holds \": \" must be quoted"),
    ("could not find expected ':'",
     "a key without a colon, or a quote opened on an earlier line and never closed: each "
     "line of a mapping is `key: value`"),
    ("found unexpected end of stream",
     "the file ends inside a quoted string: a quote is opened and never closed"),
    ("found unknown escape character",
     "an unknown backslash escape in a double-quoted string: use single quotes, or \\\\ "
     "for a backslash"),
    ("expected ',' or ']'",
     "a [list] is not closed, or two of its items lack a comma between them"),
    ("expected ',' or '}'",
     "a {mapping} is not closed, or two of its entries lack a comma between them"),
    ("found undefined alias", "an alias (*name) with no anchor (&name) before it"),
    ("expected <block end>",
     "the indentation does not line up: this line is indented differently from the "
     "lines of the same block above it; indent the keys of one item, and the items of one "
     "list, by the same number of spaces"),
    ("did not find expected key",
     "the indentation does not line up: this line is indented differently from the "
     "lines of the same block above it; indent the keys of one item, and the items of one "
     "list, by the same number of spaces"),
    ("did not find expected '-' indicator",
     "the indentation does not line up: a list item (`- ...`) is expected here, at the "
     "indentation of the items above it"),
    ("expected a single document",
     "more than one YAML document (a `---` line inside the file): the config is one"),
)


def explain(error: yaml.MarkedYAMLError) -> str:
    """
    What C{error} means, in words a person editing a config can act on; PyYAML's own
    words (in parentheses) only where no explanation fits.
    """
    said = " ".join(part for part in (error.context, error.problem) if part)
    for words, meaning in _EXPLAINED:
        if words in said:
            context = error.context_mark
            if (context is not None and error.problem_mark is not None
                    and context.line != error.problem_mark.line):
                meaning += f" (the block or string began at line {context.line + 1})"
            return meaning
    return f"the YAML cannot be read here ({said})"


def _tooDeep(text: str) -> Mark | None:
    """
    Where C{[} and C{{} first nest past L{MAX_DEPTH} in C{text} (outside quotes and
    comments), or L{None}: checked before parsing, as PyYAML's parser recurses once per
    level and would take seconds to fail on thousands.
    """
    depth, quote, line, start = 0, None, 1, 0
    previous = "\n"
    for index, char in enumerate(text):
        if char == "\n":
            line, start = line + 1, index + 1
            if quote is None or quote == "#":
                quote = None
        elif quote == "#":
            pass
        elif quote is not None:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#" and previous in " \t\n":
            quote = "#"
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return Mark(line, index - start + 1)
        elif char in "]}":
            depth -= 1
        previous = char
    return None


def load(text: str):
    """
    Load one YAML document from C{text}.

    @return: C{(data, problems)}: the data (L{None} for an empty document) and a list of
        L{YAMLProblem}; when the YAML cannot be parsed at all, C{data} is L{None} and the
        problems say where it broke.
    """
    deep = _tooDeep(text)
    if deep is not None:
        return None, [YAMLProblem(deep, f"refused: lists and mappings nest more than "
                                        f"{MAX_DEPTH} deep here")]
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
        return None, [YAMLProblem(where, f"invalid YAML: {explain(e)}")]
    except DocumentTooLarge as e:
        return None, [YAMLProblem(Mark.fromYAML(e.mark), f"refused: {e.message}")]
    except RecursionError:
        return None, [YAMLProblem(Mark(1, 1), f"refused: lists and mappings nest too deep "
                                              f"to read (more than {MAX_DEPTH} is refused)")]
    except yaml.YAMLError as e:
        return None, [YAMLProblem(Mark(1, 1), f"invalid YAML: {e}")]
    finally:
        loader.dispose()
    if getattr(loader, "fatal", False):
        return None, loader.problems
    return data, loader.problems
