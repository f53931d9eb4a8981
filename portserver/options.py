"""
Helpers to validate the C{options:} mapping of a service, for plugin authors too.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Mapping

import attrs


@attrs.frozen
class OptionProblem:
    """
    One thing wrong with a service's options.

    @ivar option: the option's name, or L{None} when the problem is the mapping as a whole.
    @ivar message: what is wrong, in words for an operator.
    """

    option: str | None
    message: str


class OptionsError(ValueError):
    """
    A service's options are invalid; C{problems} lists every L{OptionProblem} found.
    """

    def __init__(self, problems):
        self.problems = tuple(problems)
        super().__init__("; ".join(
            (f"{p.option}: {p.message}" if p.option else p.message) for p in self.problems
        ))


@attrs.frozen
class Option:
    """
    The declaration of one option: its Python type(s), default, and an optional check.

    @ivar types: the accepted type or tuple of types (C{bool} is never taken for C{int}).
    @ivar default: the value used when the option is absent.
    @ivar check: a callable given the value; returns an error message or L{None}.
    @ivar describe: the type's name in error messages.
    """

    types: type | tuple[type, ...]
    default: Any = None
    check: Callable[[Any], str | None] | None = None
    describe: str = ""


def _typeName(option: Option) -> str:
    if option.describe:
        return option.describe
    types = option.types if isinstance(option.types, tuple) else (option.types,)
    return " or ".join(t.__name__ for t in types)


def checkOptions(options: Mapping[str, Any], schema: Mapping[str, Option]) -> dict[str, Any]:
    """
    Check C{options} against C{schema}; return them with defaults filled in.

    @raise OptionsError: listing every unknown option, wrong type and failed check.
    """
    problems = []
    if not isinstance(options, Mapping):
        raise OptionsError([OptionProblem(None, "options must be a mapping")])
    result = {}
    for key in options:
        if key not in schema:
            known = ", ".join(sorted(schema)) or "none"
            problems.append(OptionProblem(str(key), f"unknown option (known: {known})"))
    for key, option in schema.items():
        if key not in options:
            result[key] = copy.deepcopy(option.default)
            continue
        value = options[key]
        types = option.types if isinstance(option.types, tuple) else (option.types,)
        if isinstance(value, bool) and bool not in types:
            ok = False
        else:
            ok = isinstance(value, types)
        if not ok:
            problems.append(OptionProblem(
                key, f"must be {_typeName(option)}, not {type(value).__name__}"))
            continue
        if option.check is not None:
            message = option.check(value)
            if message:
                problems.append(OptionProblem(key, message))
                continue
        result[key] = value
    if problems:
        raise OptionsError(problems)
    return result
