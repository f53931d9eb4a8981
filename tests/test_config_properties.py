"""
Property-based tests of the config loader (hypothesis): whatever text it is given, it
returns a configuration or problems that each say where, and never raises.
"""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from portserver.config import ConfigProblem, parseConfig
from portserver.protocols.classic import ALL
from portserver.protocols.forward import forward

PROVIDERS = {p.name: p for p in ALL + (forward,)}
KEYS = ["services", "status", "registry", "limits", "access", "shutdown", "name",
        "protocol", "port", "interface", "transports", "options", "quotes", "allow", "deny",
        "max_per_source", "rate_per_source", "idle_timeout", "listen", "drain", "host",
        "target", "connection_log", "closed_limit", "udp_idle"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["echo", "tcp", "udp", "127.0.0.1", "::1", "10.0.0.0/8", "off", "",
                     "forward", "qotd", "tcp:0", "x" * 300]),
    st.text(max_size=20))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)),
                                            inner, max_size=5)),
    max_leaves=25)
PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


class LoaderProperties(SynchronousTestCase):
    """
    The loader's contract: a config, or located problems; no other outcome.
    """

    def check(self, text: str) -> list:
        """
        Parse C{text}; assert the contract; return the problems.
        """
        specs, status, registry, shutdown, problems = parseConfig(text, "p.yaml", PROVIDERS)
        for problem in problems:
            self.assertIsInstance(problem, ConfigProblem)
            self.assertEqual(problem.path, "p.yaml")
            self.assertGreaterEqual(problem.mark.line, 1)
            self.assertGreaterEqual(problem.mark.column, 1)
            self.assertTrue(str(problem).startswith("p.yaml:"))
        if not problems:
            self.assertIsInstance(specs, list)
        return problems

    def test_controlCharacter(self):
        """
        A character YAML does not allow (found by the property below) is a located
        problem, not a C{ReaderError} traceback.
        """
        _, _, _, _, problems = parseConfig("services: []\nx: a\x1fb\n", "p.yaml", PROVIDERS)
        self.assertEqual([str(p) for p in problems], [
            "p.yaml:2:5: invalid YAML: character 0x001f is not allowed (YAML allows "
            "printable characters, tab and line breaks)"])

    @PROPERTY
    @given(st.text(max_size=400))
    def test_anyText(self, text):
        """
        Any text at all (unicode, control characters, broken YAML) gives a config or
        located problems.
        """
        self.check(text)

    @PROPERTY
    @given(VALUES)
    def test_anyYAMLDocument(self, document):
        """
        Any YAML document built from config-like keys and odd values (huge integers,
        NaN, nested lists and mappings where scalars belong) gives a config or located
        problems.
        """
        try:
            text = yaml.safe_dump(document, allow_unicode=True)
        except (yaml.YAMLError, ValueError):
            return
        self.check(text)

    @PROPERTY
    @given(st.lists(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6), max_size=4),
           st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=3))
    def test_servicesShaped(self, services, top):
        """
        Documents shaped like a config (a services list of mappings, plus top-level
        sections) with any values in them give a config or located problems.
        """
        document = dict(top)
        document["services"] = services
        try:
            text = yaml.safe_dump(document, allow_unicode=True)
        except (yaml.YAMLError, ValueError):
            return
        self.check(text)

    @PROPERTY
    @given(st.integers(1, 12), st.integers(1, 12), st.sampled_from(["x", '"lol"', "{k: v}"]),
           st.sampled_from(["services: *{last}\n", "services:\n  - {{name: s, protocol: "
                            "qotd, options: {{quotes: *{last}}}}}\n"]))
    def test_nestedAliases(self, width, depth, item, use):
        """
        Aliases nested C{depth} levels, each C{width} wide (a "billion laughs" when both
        are large), give a config or located problems, and are refused once they expand
        past the budget.
        """
        names = [f"n{level}" for level in range(depth)]
        lines = [f"{names[0]}: &{names[0]} [" + ",".join([item] * width) + "]"]
        for previous, name in zip(names, names[1:]):
            lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * width) + "]")
        text = "\n".join(lines) + "\n" + use.format(last=names[-1])
        problems = self.check(text)
        if width ** depth > 100_000:
            self.assertIn("refused:", str(problems[0]))
