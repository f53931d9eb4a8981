"""
Helpers to validate the C{options:} mapping of a service, for plugin authors too.

A protocol declares its options as a schema, a mapping of names to L{Option}s, and
L{checkOptions} checks a service's C{options:} against it::

    OPTIONS = {
        "root": Option(str, check=_checkRoot, describe="a directory path",
                       required=True, convert=os.path.realpath),
        "listing": Option(bool, default=False),
    }

Each option is checked on its own, in this order: present (when C{required}), of one of
its C{types}, accepted by its C{check}; then C{convert} normalises it. Every problem found,
for every option, is reported in one L{OptionsError}. Rules between options (and values
derived from several) belong to the C{validate} callable of
L{portserver.provider.PortProtocol}, which runs once each option has passed.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Mapping

import attrs


#: The longest duration any option may give: a year. Longer ones mean "never" and cannot
#: all be scheduled (the reactor's timers and poll timeout overflow).
MAX_SECONDS = 365 * 86400


def seconds(minimum: float = 0, inclusive: bool = False,
            maximum: float = MAX_SECONDS) -> Callable[[Any], str | None]:
    """
    A C{check} for an option giving a duration: a finite number of seconds above
    C{minimum} (or at it, if C{inclusive}) and at most C{maximum}.
    """
    def number(value: float) -> str:
        return str(int(value)) if float(value).is_integer() else str(value)

    bound = f"{number(minimum)} or more" if inclusive else f"more than {number(minimum)}"
    most = number(maximum) + (" (a year)" if maximum == MAX_SECONDS else "")

    def check(value) -> str | None:
        if not math.isfinite(value) or value > maximum or value < minimum or (
                not inclusive and value == minimum):
            return f"must be a number of seconds, {bound} and at most {most}"
        return None
    return check


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
    The declaration of one option: its Python type(s), default, an optional check, whether
    it must be given, and how its value is normalised.

    @ivar types: the accepted type or tuple of types (C{bool} is never taken for C{int}).
    @ivar default: the value used when the option is absent (a deep copy of it, so that
        no two services share one); not checked, and unused when C{required}.
    @ivar check: a callable given a value of the right type; returns an error message or
        L{None}.
    @ivar describe: what the value should be, in error messages ("a directory path");
        by default the names of C{types}.
    @ivar required: the option must be given: when it is absent, the problem is
        C{"is required"}.
    @ivar convert: a callable that returns the value normalised (C{os.path.realpath},
        C{str.lower}), applied once the value has passed its type and C{check}, and to the
        default too; never to L{None} (an absent optional value). It should not fail
        (that is C{check}'s job) and should be idempotent: checked options must pass
        again unchanged.
    """

    types: type | tuple[type, ...]
    default: Any = None
    check: Callable[[Any], str | None] | None = None
    describe: str = ""
    required: bool = False
    convert: Callable[[Any], Any] | None = None


def _typeName(option: Option) -> str:
    if option.describe:
        return option.describe
    types = option.types if isinstance(option.types, tuple) else (option.types,)
    return " or ".join(t.__name__ for t in types)


def checkOptions(options: Mapping[str, Any], schema: Mapping[str, Option]) -> dict[str, Any]:
    """
    Check C{options} against C{schema}; return them with defaults filled in and values
    converted.

    @raise OptionsError: listing every unknown option, missing required option, wrong
        type and failed check.
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
            if option.required:
                problems.append(OptionProblem(key, "is required"))
                continue
            value = copy.deepcopy(option.default)
        else:
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
        if option.convert is not None and value is not None:
            value = option.convert(value)
        result[key] = value
    if problems:
        raise OptionsError(problems)
    return result
