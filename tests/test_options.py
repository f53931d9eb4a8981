"""
Tests for L{portserver.options}'s C{required} and C{convert}, and for the C{validate} hook
of L{portserver.provider.PortProtocol}.

The older tests of L{checkOptions} (types, defaults, checks, a non-mapping) are in
L{tests.test_classic.OptionsTests}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from portserver.options import Option, OptionProblem, OptionsError, checkOptions
from portserver.protocols.execute import execute
from portserver.protocols.forward import forward
from portserver.protocols.http import http
from portserver.protocols.smtp import smtp
from portserver.provider import PortProtocol


def problemsOf(test, validate, options) -> list[tuple[str | None, str]]:
    """
    The C{(option, message)} pairs of the L{OptionsError} that C{validate(options)} raises.
    """
    error = test.assertRaises(OptionsError, validate, options)
    return [(p.option, p.message) for p in error.problems]


def refuse(value):
    """
    A C{convert} that must never be called.
    """
    raise AssertionError(f"convert called with {value!r}")


class RequiredTests(SynchronousTestCase):
    """
    L{Option.required}.
    """

    def test_missing(self):
        """
        A required option that is absent is one problem naming it, C{"is required"}.
        """
        schema = {"n": Option(int, required=True)}
        self.assertEqual(problemsOf(self, lambda o: checkOptions(o, schema), {}),
                         [("n", "is required")])

    def test_missingDescribed(self):
        """
        The message is the same with a C{describe} (which is for wrong types).
        """
        schema = {"root": Option(str, describe="a directory path", required=True)}
        self.assertEqual(problemsOf(self, lambda o: checkOptions(o, schema), {}),
                         [("root", "is required")])

    def test_given(self):
        """
        A required option that is given is checked like any other, and returned.
        """
        schema = {"n": Option(int, required=True, check=lambda v: None if v > 0 else "> 0")}
        self.assertEqual(checkOptions({"n": 2}, schema), {"n": 2})
        self.assertEqual(problemsOf(self, lambda o: checkOptions(o, schema), {"n": 0}),
                         [("n", "> 0")])
        self.assertEqual(problemsOf(self, lambda o: checkOptions(o, schema), {"n": True}),
                         [("n", "must be int, not bool")])

    def test_givenNone(self):
        """
        Presence is what counts: an explicit L{None} where C{NoneType} is accepted is a
        given value, not a missing one.
        """
        schema = {"x": Option((str, type(None)), required=True)}
        self.assertEqual(checkOptions({"x": None}, schema), {"x": None})

    def test_defaultUnused(self):
        """
        A required option's default never stands in for it.
        """
        schema = {"n": Option(int, default=3, required=True)}
        self.assertEqual(problemsOf(self, lambda o: checkOptions(o, schema), {}),
                         [("n", "is required")])

    def test_everyProblemTogether(self):
        """
        Missing required options are reported with every other problem, unknown options
        first, then the schema's options in their declared order.
        """
        schema = {
            "a": Option(int, required=True),
            "b": Option(int, check=lambda v: "must be even" if v % 2 else None),
            "c": Option(str),
            "d": Option(str, describe="a name", required=True),
        }
        error = self.assertRaises(
            OptionsError, checkOptions, {"b": 3, "c": 1, "zzz": 0}, schema)
        self.assertEqual(error.problems, (
            OptionProblem("zzz", "unknown option (known: a, b, c, d)"),
            OptionProblem("a", "is required"),
            OptionProblem("b", "must be even"),
            OptionProblem("c", "must be str, not int"),
            OptionProblem("d", "is required"),
        ))

    def test_positionalOrderKept(self):
        """
        The first four fields keep their positions (C{types, default, check, describe}),
        so declarations written before C{required} and C{convert} still mean the same.
        """
        check = lambda v: None  # noqa: E731
        option = Option(int, 3, check, "a count")
        self.assertEqual(
            (option.types, option.default, option.check, option.describe, option.required,
             option.convert),
            (int, 3, check, "a count", False, None))


class ConvertTests(SynchronousTestCase):
    """
    L{Option.convert}.
    """

    def test_givenValue(self):
        """
        A given value that passes its check is returned converted.
        """
        schema = {"name": Option(str, convert=str.lower)}
        self.assertEqual(checkOptions({"name": "MiXeD"}, schema), {"name": "mixed"})

    def test_afterTheCheck(self):
        """
        The check sees the value as given; C{convert} sees only a value that passed.
        """
        seen = []
        schema = {"name": Option(str, check=lambda v: seen.append(v) or (
            "must not be empty" if not v else None), convert=str.lower)}
        self.assertEqual(checkOptions({"name": "ABC"}, schema), {"name": "abc"})
        self.assertEqual(seen, ["ABC"])

    def test_notOnFailure(self):
        """
        A value of the wrong type, or one its check refuses, is never converted: the
        problem is reported instead.
        """
        schema = {"n": Option(int, check=lambda v: "must be positive" if v <= 0 else None,
                              convert=refuse)}
        self.assertEqual(problemsOf(self, lambda o: checkOptions(o, schema), {"n": "1"}),
                         [("n", "must be int, not str")])
        self.assertEqual(problemsOf(self, lambda o: checkOptions(o, schema), {"n": 0}),
                         [("n", "must be positive")])

    def test_default(self):
        """
        A default is converted too, from a fresh copy: the declared default is left as
        it was, and no two results share it.
        """
        default = ["B", "A"]
        schema = {"names": Option(list, default=default,
                                  convert=lambda names: sorted(n.lower() for n in names))}
        first = checkOptions({}, schema)
        self.assertEqual(first, {"names": ["a", "b"]})
        first["names"].append("leaked")
        self.assertEqual(checkOptions({}, schema), {"names": ["a", "b"]})
        self.assertEqual(default, ["B", "A"])

    def test_notNone(self):
        """
        L{None}, the default of an optional value or given where C{NoneType} is allowed,
        is left as it is.
        """
        schema = {"x": Option((str, type(None)), default=None, convert=refuse)}
        self.assertEqual(checkOptions({}, schema), {"x": None})
        self.assertEqual(checkOptions({"x": None}, schema), {"x": None})

    def test_requiredAndConverted(self):
        """
        C{required} and C{convert} together: absent is a problem, present is converted.
        """
        schema = {"root": Option(str, describe="a path", required=True, convert=str.upper)}
        self.assertEqual(checkOptions({"root": "x"}, schema), {"root": "X"})
        self.assertEqual(problemsOf(self, lambda o: checkOptions(o, schema), {}),
                         [("root", "is required")])


class ValidateTests(SynchronousTestCase):
    """
    The C{validate} hook of L{PortProtocol}, run by C{validateOptions}.
    """

    def provider(self, validate):
        return PortProtocol(
            name="test", description="a test protocol", wellKnownPort=1,
            options={
                "host": Option(str, required=True, convert=str.lower),
                "port": Option(int, default=80, check=lambda p: (
                    None if 1 <= p <= 65535 else "must be 1-65535")),
                "address": Option((str, type(None)), default=None),
            },
            validate=validate,
        )

    def test_notCalledOnProblems(self):
        """
        C{validate} is not called while any option fails its own check: the error
        lists those problems only.
        """
        calls = []
        provider = self.provider(lambda options: calls.append(options) or [
            OptionProblem(None, "between options")])
        for options in [{}, {"host": "h", "port": 0}, {"host": "h", "bogus": 1}]:
            problems = problemsOf(self, provider.validateOptions, options)
            self.assertNotIn((None, "between options"), problems)
        self.assertEqual(calls, [])

    def test_calledWithCheckedOptions(self):
        """
        C{validate} gets the checked options: defaults filled in, values converted.
        """
        calls = []
        provider = self.provider(lambda options: calls.append(dict(options)) or [])
        provider.validateOptions({"host": "EXAMPLE.com"})
        self.assertEqual(calls, [{"host": "example.com", "port": 80, "address": None}])

    def test_fillsValues(self):
        """
        C{validate} may complete the options in place, from several of them; what it
        fills in is what C{validateOptions} returns, and it validates again unchanged.
        """
        def fill(options):
            if options["address"] is None:
                options["address"] = f"{options['host']}:{options['port']}"
            return []

        provider = self.provider(fill)
        options = provider.validateOptions({"host": "Example.COM", "port": 8080})
        self.assertEqual(options, {"host": "example.com", "port": 8080,
                                   "address": "example.com:8080"})
        self.assertEqual(provider.validateOptions(options), options)

    def test_problems(self):
        """
        The problems C{validate} returns are raised together as an L{OptionsError}.
        """
        provider = self.provider(lambda options: [
            OptionProblem("port", "not with this host"), OptionProblem(None, "and more")])
        error = self.assertRaises(OptionsError, provider.validateOptions, {"host": "h"})
        self.assertEqual(error.problems, (OptionProblem("port", "not with this host"),
                                          OptionProblem(None, "and more")))
        self.assertEqual(str(error), "port: not with this host; and more")


class BuiltinDeclarationTests(SynchronousTestCase):
    """
    The built-in protocols with options declare them, without subclassing.
    """

    def test_plainPortProtocol(self):
        """
        C{http}, C{smtp}, C{exec} and C{forward} are plain L{PortProtocol}s, their rules
        given as C{required}, C{convert} and C{validate}.
        """
        for provider in (http, smtp, execute, forward):
            self.assertIs(type(provider), PortProtocol, provider.name)
