"""
Tests for L{portserver.config} (and L{portserver.plan.loadPlan} as the door to it): every
kind of configuration problem is found, placed at its file, line and column, attributed
to its service, and all of a file's problems are reported together.

Nothing here depends on the host: /etc/services, the privileged-port rule and dual-stack
behaviour are all injected.
"""

from __future__ import annotations

import os
from textwrap import dedent

from twisted.trial.unittest import SynchronousTestCase

import tests
from portserver.config import (
    ConfigError,
    ConfigProblem,
    ServiceSpec,
    parseServices,
    readConfig,
)
from portserver.limits import Limits
from portserver.marks import Mark
from portserver.plan import loadPlan
from portserver.ports import PrivilegeRule
from portserver.protocols import classic
from portserver.provider import PortProtocol

PATH = "test.yaml"
RULE = PrivilegeRule(1024, "test")
SHIPPED_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    tests.__file__))), "etc", "portserver.yaml")

#: A protocol with a TCP side only.
tcpOnly = PortProtocol(name="tcponly", description="TCP only", wellKnownPort=4000,
                       factory=lambda service, reactor: None)


class BrokenOptionsProtocol(PortProtocol):
    """
    A plugin with a bug: checking its options raises something that is not an
    L{portserver.options.OptionsError}.
    """

    def validateOptions(self, options):
        raise RuntimeError("plugin bug")


broken = BrokenOptionsProtocol(name="broken", description="buggy", wellKnownPort=4001,
                               factory=lambda service, reactor: None)

PROVIDERS = {p.name: p for p in classic.ALL}
PROVIDERS_PLUS = {**PROVIDERS, tcpOnly.name: tcpOnly, broken.name: broken}

#: A fake /etc/services: (name, transport) -> port.
SERVICES = {
    ("myservice", "tcp"): 4242, ("myservice", "udp"): 4242,
    ("split", "tcp"): 5000, ("split", "udp"): 5001,
    ("streamonly", "tcp"): 6000,
}


class FakeServices:
    """
    A fake /etc/services lookup over L{SERVICES} that records what it was asked.
    """

    def __init__(self):
        self.calls: list[tuple[str, str]] = []

    def __call__(self, name: str, transport: str) -> int | None:
        self.calls.append((name, transport))
        return SERVICES.get((name, transport))


def parse(text: str, providers=PROVIDERS_PLUS, servicePort=None):
    """
    Parse the YAML C{text} (dedented) as C{test.yaml} with the fake /etc/services.

    @return: C{(specs, problems)} as L{parseServices} gives them.
    """
    return parseServices(dedent(text), PATH, providers,
                         servicePort if servicePort is not None else FakeServices())


def problems(text: str, **kwargs) -> list[str]:
    """
    The problems of C{text}, as the strings an operator sees.
    """
    return [str(p) for p in parse(text, **kwargs)[1]]


def onlySpec(testCase, text: str, **kwargs) -> ServiceSpec:
    """
    Parse C{text}, which must be valid and hold exactly one service; return its spec.
    """
    specs, found = parse(text, **kwargs)
    testCase.assertEqual([str(p) for p in found], [])
    testCase.assertEqual(len(specs), 1)
    return specs[0]


def oneService(*lines: str, name: str = "svc", protocol: str = "echo") -> str:
    """
    A config with one service: C{name} on line 2 (value at column 11), C{protocol} on
    line 3 (value at column 15), then C{lines} as further keys from line 4 on (a key at
    column 5).
    """
    keys = [f"name: {name}", f"protocol: {protocol}", *lines]
    return "services:\n  - " + "\n    ".join(keys) + "\n"


class YAMLLevelTests(SynchronousTestCase):
    """
    Problems in the YAML itself and in the top-level shape of the file.
    """

    def test_syntaxError(self):
        """
        YAML that cannot be parsed gives one problem, at the line and column where
        parsing broke, and no services.
        """
        specs, found = parse("""\
            services:
              - name: svc
                protocol: echo
               port: 7
            """)
        self.assertEqual(specs, [])
        self.assertEqual(len(found), 1)
        self.assertTrue(str(found[0]).startswith("test.yaml:4:4: invalid YAML: "),
                        str(found[0]))
        self.assertIsNone(found[0].service)

    def test_syntaxErrorsInPlainWords(self):
        """
        The usual YAML mistakes are explained in words an operator can act on, at the
        place parsing broke, with no PyYAML internals (no C{<block end>}, no C{scanning
        for the next token}).
        """
        cases = [
            ("services:\n  - name: svc\n    protocol: echo\n   port: 7\n",
             "test.yaml:4:4: invalid YAML: the indentation does not line up"),
            ("services:\n\t- name: svc\n",
             "test.yaml:2:1: invalid YAML: a tab character: YAML indents with spaces only"),
            ("services:\n  - name:svc\n    protocol: echo\n",
             "invalid YAML: a colon where none can be: a key needs a space after its colon"),
            ('services:\n  - name: "svc\n    protocol: echo\n',
             "invalid YAML: the file ends inside a quoted string: a quote is opened and "
             "never closed (the block or string began at line 2)"),
            ("services: [{name: svc, protocol: echo}\n",
             "invalid YAML: a [list] is not closed, or two of its items lack a comma"),
            ("services: !!python/object:os.system x\n",
             "invalid YAML: a YAML tag (!!python/..., !name) that a config cannot use"),
            ("services: [\n  - name: svc\n]\n",
             "invalid YAML: a block item (`- ...` or `key: value` on its own line) inside"),
            ("services:\n  - name: %svc\n",
             "invalid YAML: a value that cannot start with this character"),
        ]
        for text, expected in cases:
            [found] = parse(text)[1]
            self.assertIn(expected, str(found), text)
            for internal in ("<block", "scanning", "while parsing", "token"):
                self.assertNotIn(internal, str(found), text)

    def test_aliasBombRefused(self):
        """
        Nested aliases that would expand to a billion values ("billion laughs", 412
        bytes) are refused where the expansion passes the budget, without expanding
        anything.
        """
        lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        for name, previous in zip("bcdefghi", "abcdefgh"):
            lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
        lines.append("services:\n  - {name: svc, protocol: qotd, options: {quotes: *i}}")
        [found] = parse("\n".join(lines) + "\n")[1]
        self.assertIn("refused: the document holds more than 100,000 values once its "
                      "aliases are expanded", str(found))
        self.assertRegex(str(found), r"^test\.yaml:\d+:\d+: ")

    def test_deepNestingRefused(self):
        """
        Thousands of nested brackets are refused at the bracket past the limit, before
        PyYAML's parser recurses into them.
        """
        [found] = parse("services: " + "[" * 5000 + "]" * 5000 + "\n")[1]
        self.assertEqual(str(found), "test.yaml:1:75: refused: lists and mappings nest "
                                     "more than 64 deep here")

    def test_hugeNumberRefused(self):
        """
        A 5000-digit number is one located error (not Python's int-size ValueError, and
        no second error about its value).
        """
        self.assertEqual(problems(oneService("port: " + "9" * 5000)),
                         ["test.yaml:4:11: a number of 5000 digits: numbers here have at "
                          "most 30"])

    def test_durationsTooLongOrInfinite(self):
        """
        Durations too long to schedule, or infinite, are located errors naming the
        bound.
        """
        found = problems(oneService(
            "limits: {idle_timeout: 1.0e+300, deadline: .inf, close_grace: 1.0e+20}"))
        self.assertEqual(len(found), 3, found)
        for problem in found:
            self.assertIn("must be a number of seconds, more than 0 and at most 31536000 "
                          "(a year)", problem)

    def test_duplicateKey(self):
        """
        A key given twice in one mapping is reported at the second one, naming the line of
        the first, instead of YAML silently keeping the last value.
        """
        self.assertEqual(
            problems(oneService("name: other")),
            ["test.yaml:4:5: duplicate key 'name' (first given at line 2)"])

    def test_duplicateKeyDoesNotHideOtherProblems(self):
        """
        After a duplicate key the file is still checked: a bad port in the same service
        is reported too.
        """
        self.assertEqual(
            problems(oneService("port: 0", "port: 8")),
            ["test.yaml:5:5: duplicate key 'port' (first given at line 4)",
             "test.yaml:4:11: service 'svc': 'port' 0 is outside 1-65535"])

    def test_emptyFile(self):
        """
        An empty file, or one of comments only, is refused at 1:1 saying what was expected.
        """
        expected = ["test.yaml:1:1: the file is empty: expected a mapping with 'services:'"]
        self.assertEqual(problems(""), expected)
        self.assertEqual(problems("# nothing here\n\n"), expected)

    def test_topLevelList(self):
        """
        A file holding a list is refused where the list starts (after comments).
        """
        self.assertEqual(
            problems("# a comment\n- name: svc\n"),
            ["test.yaml:2:1: the file must hold a mapping with 'services:', not a list"])

    def test_topLevelScalar(self):
        """
        A file holding a plain string is refused, saying it is a string.
        """
        self.assertEqual(
            problems("echo\n"),
            ["test.yaml:1:1: the file must hold a mapping with 'services:', not a string"])

    def test_unknownTopLevelKey(self):
        """
        A top-level key other than C{services} is reported at the key, with the known keys.
        """
        self.assertEqual(
            problems("services: []\nsettings: 1\n"),
            ["test.yaml:2:1: unknown top-level key 'settings' (known: services, status, registry, limits, access, shutdown, workers)"])

    def test_missingServices(self):
        """
        A mapping without C{services} is reported where the mapping starts.
        """
        self.assertEqual(
            problems("# a comment\nservice: []\n"),
            ["test.yaml:2:1: unknown top-level key 'service' (known: services, status, registry, limits, access, shutdown, workers)",
             "test.yaml:2:1: missing required key 'services'"])

    def test_servicesNotAList(self):
        """
        C{services} holding a number or a mapping is reported at its value.
        """
        self.assertEqual(problems("services: 3\n"),
                         ["test.yaml:1:11: 'services' must be a list, not a whole number"])
        self.assertEqual(problems("services:\n  name: svc\n"),
                         ["test.yaml:2:3: 'services' must be a list, not a mapping"])


class ServiceShapeTests(SynchronousTestCase):
    """
    Problems with the keys of a service and their types.
    """

    def test_serviceNotAMapping(self):
        """
        A service that is not a mapping is reported at the list item; the next item is
        still checked.
        """
        self.assertEqual(
            problems("""\
                services:
                  - echo
                  - name: svc
                    protocol: nope
                """),
            ["test.yaml:2:5: a service must be a mapping, not a string",
             "test.yaml:4:15: service 'svc': unknown protocol 'nope' (known: broken, "
             "chargen, daytime, discard, echo, qotd, tcponly, time)"])

    def test_unknownServiceKey(self):
        """
        An unknown key of a service is reported at the key, with the service's name and
        the known keys.
        """
        self.assertEqual(
            problems(oneService("prot: 7")),
            ["test.yaml:4:5: service 'svc': unknown key 'prot' (known: name, protocol, "
             "port, interface, transports, options, limits, access, proxy_protocol)"])

    def test_missingName(self):
        """
        A service without a name is reported where the service starts.
        """
        self.assertEqual(
            problems("services:\n  - protocol: echo\n    port: 7\n"),
            ["test.yaml:2:5: missing required key 'name'"])

    def test_missingProtocol(self):
        """
        A service without a protocol is reported where the service starts, naming it.
        """
        self.assertEqual(
            problems("services:\n  - name: svc\n    port: 7\n"),
            ["test.yaml:2:5: service 'svc': missing required key 'protocol'"])

    def test_badName(self):
        """
        A name that does not start with a letter or digit, or holds other characters
        than letters, digits, '.', '_' and '-', is reported at its value.
        """
        for name in ("-svc", "my svc", "svc/1", ".svc"):
            self.assertEqual(
                problems(oneService(name=repr(name))),
                [f"test.yaml:2:11: service {name!r}: 'name' {name!r} must start with a "
                 "letter or digit and hold only letters, digits, '.', '_' and '-'"])

    def test_goodNames(self):
        """
        Names of letters, digits, '.', '_' and '-' starting with a letter or digit pass.
        """
        for name in ("a", "7", "echo-tcp_2.local"):
            self.assertEqual(onlySpec(self, oneService(name=repr(name))).name, name)

    def test_nameNotAString(self):
        """
        A name that is a number, a boolean or a list is reported at its value with its type.
        """
        for value, kind in (("5", "a whole number"), ("true", "a boolean"), ("[a]", "a list")):
            self.assertEqual(
                problems(oneService(name=value)),
                [f"test.yaml:2:11: 'name' must be a string, not {kind}"])

    def test_protocolNotAString(self):
        """
        A protocol that is a list is reported at its value.
        """
        self.assertEqual(
            problems(oneService(protocol="[echo]")),
            ["test.yaml:3:15: service 'svc': 'protocol' must be a string, not a list"])

    def test_unknownProtocol(self):
        """
        An unknown protocol is reported at its value, listing the known protocols.
        """
        self.assertEqual(
            problems(oneService(protocol="ehco"), providers=PROVIDERS),
            ["test.yaml:3:15: service 'svc': unknown protocol 'ehco' (known: chargen, "
             "daytime, discard, echo, qotd, time)"])

    def test_portWrongType(self):
        """
        A port that is a boolean or a list is reported at its value with its type.
        """
        for value, kind in (("true", "a boolean"), ("[7]", "a list"), ("{a: 1}", "a mapping")):
            self.assertEqual(
                problems(oneService(f"port: {value}")),
                [f"test.yaml:4:11: service 'svc': 'port' must be a whole number or a service "
                 f"name, not {kind}"])

    def test_portFloat(self):
        """
        A fractional port is refused at its value.
        """
        found = problems(oneService("port: 7.5"))
        self.assertEqual(len(found), 1)
        self.assertTrue(found[0].startswith("test.yaml:4:11: service 'svc': 'port' must be"),
                        found[0])

    def test_portFloatMessageIsNotSelfContradictory(self):
        """
        The message for a fractional port does not say a port must be a number and then
        that the value given is not one.
        """
        [found] = problems(oneService("port: 7.5"))
        self.assertNotIn("not a number", found)


    def test_interfaceNotAString(self):
        """
        An interface that is a number is reported at its value.
        """
        self.assertEqual(
            problems(oneService("interface: 5")),
            ["test.yaml:4:16: service 'svc': 'interface' must be an IP address string, "
             "not a whole number"])

    def test_transportsWrongType(self):
        """
        Transports that are a number, an empty list or a mapping are reported at the value.
        """
        for value in ("5", "[]", "{tcp: 1}"):
            self.assertEqual(
                problems(oneService(f"transports: {value}")),
                ["test.yaml:4:17: service 'svc': 'transports' must be a non-empty list of "
                 "tcp and udp"])

    def test_transportsSingleString(self):
        """
        A single transport may be given as a string instead of a list.
        """
        self.assertEqual(onlySpec(self, oneService("transports: udp")).transports, ("udp",))

    def test_unknownTransport(self):
        """
        A transport other than tcp and udp is reported, listing the known ones.
        """
        self.assertEqual(
            problems(oneService("transports: [tcp, sctp]")),
            ["test.yaml:4:17: service 'svc': unknown transport 'sctp' (known: tcp, udp)"])

    def test_transportTheProtocolLacks(self):
        """
        Asking a TCP-only protocol for udp is reported, saying which transports it has.
        """
        self.assertEqual(
            problems(oneService("transports: [tcp, udp]", protocol="tcponly")),
            ["test.yaml:4:17: service 'svc': protocol 'tcponly' has no udp transport "
             "(it has: tcp)"])

    def test_duplicateTransport(self):
        """
        A transport listed twice is reported.
        """
        self.assertEqual(
            problems(oneService("transports: [udp, tcp, udp]")),
            ["test.yaml:4:17: service 'svc': transport 'udp' is listed twice"])

    def test_transportsInOrder(self):
        """
        Valid transports are kept in the order given.
        """
        self.assertEqual(onlySpec(self, oneService("transports: [udp, tcp]")).transports,
                         ("udp", "tcp"))


class PortTests(SynchronousTestCase):
    """
    The C{port} key: range, digit strings and /etc/services names.
    """

    def test_outOfRange(self):
        """
        Ports 0, 65536 and 70000 are reported at the value as outside 1-65535.
        """
        for port in (0, 65536, 70000):
            self.assertEqual(
                problems(oneService(f"port: {port}")),
                [f"test.yaml:4:11: service 'svc': 'port' {port} is outside 1-65535"])

    def test_rangeEnds(self):
        """
        Ports 1 and 65535 are accepted.
        """
        for port in (1, 65535):
            self.assertEqual(onlySpec(self, oneService(f"port: {port}")).port, port)

    def test_digitString(self):
        """
        A quoted number is taken as that port; a quoted 0 is still out of range.
        """
        self.assertEqual(onlySpec(self, oneService("port: '7000'")).port, 7000)
        self.assertEqual(problems(oneService("port: '0'")),
                         ["test.yaml:4:11: service 'svc': 'port' 0 is outside 1-65535"])

    def test_nonASCIIDigitString(self):
        """
        A string of characters Python calls digits but C{int} cannot read (a superscript
        two) is a config problem at the port, not an exception.
        """
        found = problems(oneService("port: '\u00b2'"))
        self.assertEqual(len(found), 1)
        self.assertTrue(found[0].startswith("test.yaml:4:11: service 'svc': 'port'"),
                        found[0])


    def test_serviceName(self):
        """
        A port given as a name is resolved through the injected /etc/services lookup,
        once per transport of the service.
        """
        lookup = FakeServices()
        spec = onlySpec(self, oneService("port: myservice", "transports: [tcp, udp]"),
                        servicePort=lookup)
        self.assertEqual(spec.port, 4242)
        self.assertEqual(sorted(lookup.calls), [("myservice", "tcp"), ("myservice", "udp")])

    def test_serviceNameDefaultsToTCP(self):
        """
        Without C{transports}, a port name is looked up for tcp only.
        """
        lookup = FakeServices()
        self.assertEqual(onlySpec(self, oneService("port: streamonly"),
                                  servicePort=lookup).port, 6000)
        self.assertEqual(lookup.calls, [("streamonly", "tcp")])

    def test_serviceNamePerTransport(self):
        """
        A name is resolved for the service's own transports: a name with different tcp
        and udp ports is fine for a udp-only service (it gets the udp port).
        """
        self.assertEqual(
            onlySpec(self, oneService("port: split", "transports: [udp]")).port, 5001)

    def test_serviceNameDiffersBetweenTransports(self):
        """
        A name whose tcp and udp ports differ cannot give one port to a tcp+udp service.
        """
        self.assertEqual(
            problems(oneService("port: split", "transports: [tcp, udp]")),
            ["test.yaml:4:11: service 'svc': 'port' 'split' is not a service name known to "
             "/etc/services for tcp/udp"])

    def test_serviceNameMissingForATransport(self):
        """
        A name /etc/services has for tcp only is refused for a tcp+udp service.
        """
        self.assertEqual(
            problems(oneService("port: streamonly", "transports: [tcp, udp]")),
            ["test.yaml:4:11: service 'svc': 'port' 'streamonly' is not a service name "
             "known to /etc/services for tcp/udp"])

    def test_unknownServiceName(self):
        """
        A name /etc/services does not have is reported at the port.
        """
        self.assertEqual(
            problems(oneService("port: nosuchservice")),
            ["test.yaml:4:11: service 'svc': 'port' 'nosuchservice' is not a service name "
             "known to /etc/services for tcp"])


class InterfaceTests(SynchronousTestCase):
    """
    The C{interface} key: IP addresses only, normalised.
    """

    def test_hostName(self):
        """
        A host name such as localhost is refused at its value: only IP addresses are taken.
        """
        self.assertEqual(
            problems(oneService("interface: localhost")),
            ["test.yaml:4:16: service 'svc': 'interface' 'localhost' is not an IPv4 or "
             "IPv6 address (use 0.0.0.0 or :: for all)"])

    def test_ipv6Normalised(self):
        """
        IPv6 addresses are kept in their canonical short form.
        """
        for given, canonical in (("'::0001'", "::1"), ("'0:0:0:0:0:0:0:0'", "::"),
                                 ("'2001:DB8:0::1'", "2001:db8::1")):
            self.assertEqual(
                onlySpec(self, oneService(f"interface: {given}")).interface, canonical)

    def test_ipv4MappedNormalisedToIPv4(self):
        """
        An IPv4-mapped IPv6 address is taken as the IPv4 address it maps.
        """
        self.assertEqual(
            onlySpec(self, oneService("interface: '::ffff:127.0.0.1'")).interface,
            "127.0.0.1")

    def test_ipv4(self):
        """
        An IPv4 address is kept as given.
        """
        self.assertEqual(onlySpec(self, oneService("interface: 127.0.0.1")).interface,
                         "127.0.0.1")


class DefaultsTests(SynchronousTestCase):
    """
    What a service gets for the keys it leaves out.
    """

    def test_defaults(self):
        """
        A service of only name and protocol gets the protocol's well-known port, all IPv4
        interfaces, tcp, the protocol's default options and its default limits.
        """
        spec = onlySpec(self, oneService(protocol="daytime"))
        self.assertEqual(spec, ServiceSpec(name="svc", protocol="daytime", port=13,
                                           interface="0.0.0.0", transports=("tcp",),
                                           options={}, limits=Limits(idleTimeout=300,
                                                                     udpRatePerSource=10)))
        self.assertIs(spec.provider, classic.daytimeProtocol)
        self.assertEqual(spec.path, PATH)

    def test_defaultOptionsValidated(self):
        """
        The options of a spec are what the protocol's C{validateOptions} returned, so an
        absent or empty C{options} gets the protocol's defaults.
        """
        for extra in ((), ("options:",), ("options: {}",)):
            spec = onlySpec(self, oneService(*extra, protocol="qotd"))
            self.assertEqual(spec.options, {"quotes": list(classic.DEFAULT_QUOTES)})

    def test_marks(self):
        """
        A spec remembers where each key's value stood, and where the service started.
        """
        spec = onlySpec(self, oneService("port: 7"))
        self.assertEqual(spec.mark("port"), Mark(4, 11))
        self.assertEqual(spec.mark("interface"), Mark(2, 5))


class OptionsTests(SynchronousTestCase):
    """
    The C{options} key, checked by the protocol.
    """

    def test_optionProblemAtItsKey(self):
        """
        An option the protocol refuses is reported at that option's key.
        """
        self.assertEqual(
            problems(oneService("options:", "  quotes: []", protocol="qotd")),
            ["test.yaml:5:7: service 'svc': option 'quotes': must list at least one quote"])

    def test_everyOptionProblem(self):
        """
        Every option problem is reported, each at its own key.
        """
        self.assertEqual(
            sorted(problems(oneService("options:", "  quotes: [' ']", "  colour: red",
                                       protocol="qotd"))),
            ["test.yaml:5:7: service 'svc': option 'quotes': quote 1 must be a non-empty "
             "string",
             "test.yaml:6:7: service 'svc': option 'colour': unknown option (known: quotes)"])

    def test_optionsNotAMapping(self):
        """
        Options that are a list are reported at the value.
        """
        self.assertEqual(
            problems(oneService("options: [quotes]", protocol="qotd")),
            ["test.yaml:4:14: service 'svc': 'options' must be a mapping, not a list"])

    def test_givenOptionsKept(self):
        """
        Valid options are passed on as the protocol returned them.
        """
        spec = onlySpec(self, oneService("options: {quotes: [Hello.]}", protocol="qotd"))
        self.assertEqual(spec.options, {"quotes": ["Hello."]})

    def test_pluginBug(self):
        """
        A protocol whose C{validateOptions} raises something unexpected gives a config
        problem at the options (naming the protocol and the exception), not a traceback.
        """
        self.assertEqual(
            problems(oneService("options: {a: 1}", protocol="broken")),
            ["test.yaml:4:14: service 'svc': protocol 'broken' failed to check its options: "
             "RuntimeError: plugin bug"])

    def test_pluginBugWithoutOptions(self):
        """
        The buggy protocol is reported at the service when it has no C{options} key.
        """
        self.assertEqual(
            problems(oneService(protocol="broken")),
            ["test.yaml:2:5: service 'svc': protocol 'broken' failed to check its options: "
             "RuntimeError: plugin bug"])


class ServiceListTests(SynchronousTestCase):
    """
    Checks across services.
    """

    def test_duplicateName(self):
        """
        A second service of the same name is reported at its name, pointing to the line of
        the first; the first is kept.
        """
        specs, found = parse("""\
            services:
              - name: svc
                protocol: echo
              - name: svc
                protocol: discard
            """)
        self.assertEqual([str(p) for p in found],
                         ["test.yaml:4:11: service 'svc': duplicate service name (first "
                          "defined at line 2)"])
        self.assertEqual([(s.name, s.protocol) for s in specs], [("svc", "echo")])

    def test_validServicesKept(self):
        """
        Services with a problem are left out; the valid ones are returned, in order.
        """
        specs, found = parse("""\
            services:
              - {name: a, protocol: echo}
              - {name: b, protocol: echo, port: 0}
              - {name: c, protocol: time}
            """)
        self.assertEqual(len(found), 1)
        self.assertEqual([s.name for s in specs], ["a", "c"])


class ProblemTests(SynchronousTestCase):
    """
    L{ConfigProblem} and L{ConfigError} as text.
    """

    def test_problemText(self):
        """
        A problem reads C{path:line:col: service 'name': message}, or without the service
        part when it concerns none.
        """
        self.assertEqual(str(ConfigProblem("a.yaml", Mark(3, 7), "bad", "svc")),
                         "a.yaml:3:7: service 'svc': bad")
        self.assertEqual(str(ConfigProblem("a.yaml", Mark(3, 7), "bad")), "a.yaml:3:7: bad")

    def test_report(self):
        """
        The report counts the problems and lists each, indented, in the order given; the
        exception's message is the report.
        """
        error = ConfigError([ConfigProblem("a.yaml", Mark(1, 1), "first"),
                             ConfigProblem("a.yaml", Mark(2, 5), "second", "svc")])
        self.assertEqual(error.report(), "2 configuration errors:\n"
                                         "  a.yaml:1:1: first\n"
                                         "  a.yaml:2:5: service 'svc': second")
        self.assertEqual(str(error), error.report())

    def test_reportSingular(self):
        """
        One problem is "1 configuration error".
        """
        error = ConfigError([ConfigProblem("a.yaml", Mark(1, 1), "only")])
        self.assertEqual(error.report(), "1 configuration error:\n  a.yaml:1:1: only")


def load(text: str, **kwargs):
    """
    L{loadPlan} on the (dedented) C{text} as C{test.yaml}, with a fixed privileged rule,
    dual stack and the fake /etc/services.
    """
    kwargs.setdefault("rule", RULE)
    kwargs.setdefault("dualStack", True)
    kwargs.setdefault("servicePort", FakeServices())
    return loadPlan(PATH, PROVIDERS_PLUS, text=dedent(text), **kwargs)


class LoadPlanTests(SynchronousTestCase):
    """
    L{loadPlan}: a whole file is refused with all its problems at once.
    """

    def test_allProblemsAtOnce(self):
        """
        Every problem of the file, from the YAML, the services, the options and the port
        plan, comes in one L{ConfigError}, sorted by line.
        """
        error = self.assertRaises(ConfigError, load, """\
            services:
              - name: a
                protocol: echo
                port: 7
              - name: b
                protocol: qotd
                options:
                  quotes: []
                  colour: red
              - name: c
                protocol: echo
                port: 7
                interface: localhost
                name: d
              - name: e
                protocol: echo
                port: 7
            extra: 1
            """)
        self.assertEqual(
            [str(p) for p in error.problems],
            ["test.yaml:8:7: service 'b': option 'quotes': must list at least one quote",
             "test.yaml:9:7: service 'b': option 'colour': unknown option (known: quotes)",
             "test.yaml:13:16: service 'c': 'interface' 'localhost' is not an IPv4 or IPv6 "
             "address (use 0.0.0.0 or :: for all)",
             "test.yaml:14:5: duplicate key 'name' (first given at line 10)",
             "test.yaml:17:11: service 'e': tcp port 7 on 0.0.0.0 overlaps service 'a' "
             "(0.0.0.0, line 2): a host cannot give one tcp port to two services",
             "test.yaml:18:1: unknown top-level key 'extra' (known: services, status, registry, limits, access, shutdown, workers)"])
        self.assertTrue(error.report().startswith("6 configuration errors:\n"))

    def test_valid(self):
        """
        A valid file gives a plan of its services and listeners, with the rule and offset.
        """
        plan = load("""\
            services:
              - {name: a, protocol: echo, transports: [tcp, udp]}
              - {name: b, protocol: time, port: myservice}
            """, portOffset=100)
        self.assertEqual([s.name for s in plan.config.services], ["a", "b"])
        self.assertEqual(plan.config.path, PATH)
        self.assertEqual([(l.service, l.transport, l.port) for l in plan.listeners],
                         [("a", "tcp", 107), ("a", "udp", 107), ("b", "tcp", 4242)])
        self.assertEqual((plan.portOffset, plan.rule), (100, RULE))

    def test_readsFile(self):
        """
        Without C{text}, the file at the path is read.
        """
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(oneService(protocol="chargen"))
        plan = loadPlan(path, PROVIDERS, rule=RULE, dualStack=True)
        self.assertEqual([(l.service, l.port) for l in plan.listeners], [("svc", 19)])
        self.assertEqual(plan.config.path, path)

    def test_missingFile(self):
        """
        A file that cannot be read is refused with one problem naming the path, and no
        made-up position in it.
        """
        path = self.mktemp()
        error = self.assertRaises(ConfigError, loadPlan, path, PROVIDERS, rule=RULE,
                                  dualStack=True)
        self.assertEqual(len(error.problems), 1)
        self.assertTrue(str(error.problems[0]).startswith(
            f"{path}: cannot read the config file: "), str(error.problems[0]))

    def test_readConfigMissingFile(self):
        """
        L{readConfig} on a missing file gives no text and a problem of that path, at no
        position, saying why it could not be read.
        """
        path = self.mktemp()
        text, found = readConfig(path)
        self.assertIsNone(text)
        self.assertEqual([(p.path, p.mark) for p in found], [(path, None)])
        self.assertIn("cannot read the config file", found[0].message)
        self.assertIn("No such file", found[0].message)

    def test_unreadableIsOneLine(self):
        """
        A file that cannot be read is reported as one sentence after its name: no
        position and no "1 configuration error:" heading over a single line.
        """
        path = self.mktemp()
        error = self.assertRaises(ConfigError, loadPlan, path, PROVIDERS, rule=RULE,
                                  dualStack=True)
        self.assertEqual(error.report(),
                         "cannot read the config file: No such file or directory")
        directory = self.mktemp()
        os.makedirs(directory)
        self.assertEqual([str(p) for p in readConfig(directory)[1]],
                         [f"{directory}: cannot read the config file: Is a directory"])

    def test_notUTF8Located(self):
        """
        A file that is not UTF-8 is refused at the line and column of the first byte
        that is not, not with Python's codec message.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write("services: []\n# caf\u00e9 na\xefve \xe9t\xe9\n".encode("latin-1"))
        text, found = readConfig(path)
        self.assertIsNone(text)
        self.assertEqual([str(p) for p in found], [
            f"{path}:2:6: cannot read the config file: it is not UTF-8 text (byte 0xe9 "
            "here): save it as UTF-8"])

    def test_tooLargeFile(self):
        """
        A file over 4 MiB is refused unread (C{-c} given a log, or a device that never
        ends, must not fill the memory).
        """
        from portserver.config import MAX_CONFIG_BYTES
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("#" * MAX_CONFIG_BYTES + "\n")
        text, found = readConfig(path)
        self.assertIsNone(text)
        self.assertEqual([str(p) for p in found], [
            f"{path}: cannot read the config file: it is larger than 4 MiB (a config is a "
            "few kilobytes: is this the right file?)"])

    def test_readConfigLineEnds(self):
        """
        Windows and old Mac line ends are read as line ends, as text mode reads them.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"services:\r\n  - {name: a, protocol: echo}\r  # end\r\n")
        self.assertEqual(readConfig(path),
                         ("services:\n  - {name: a, protocol: echo}\n  # end\n", []))

    def test_aliasBombFromFile(self):
        """
        The 9-level "billion laughs" of the issue (unquoted items, read from a file
        through L{loadPlan}, as C{--check} does) is one located refusal.
        """
        lines = ["a: &a [x,x,x,x,x,x,x,x,x]"]
        for name, previous in zip("bcdefghi", "abcdefgh"):
            lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\nservices: *i\n")
        error = self.assertRaises(ConfigError, loadPlan, path, PROVIDERS, rule=RULE,
                                  dualStack=True)
        [problem] = error.problems
        self.assertRegex(str(problem), rf"^{path}:[6-9]:\d+: refused: the document holds "
                                       r"more than 100,000 values once its aliases are "
                                       r"expanded")

    def test_readConfig(self):
        """
        L{readConfig} on a readable file gives its text and no problems.
        """
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("services: []\n")
        self.assertEqual(readConfig(path), ("services: []\n", []))

    def test_shippedConfig(self):
        """
        The bundled C{etc/portserver.yaml} is valid: six services, each over tcp and udp,
        all on 127.0.0.1 at their well-known ports, so twelve listeners.
        """
        plan = loadPlan(SHIPPED_CONFIG, PROVIDERS, rule=RULE, dualStack=True,
                        servicePort=FakeServices())
        self.assertEqual([s.name for s in plan.config.services],
                         ["echo", "discard", "daytime", "qotd", "chargen", "time"])
        self.assertEqual(len(plan.listeners), 12)
        self.assertEqual({l.interface for l in plan.listeners}, {"127.0.0.1"})
        self.assertEqual(
            [(l.service, l.transport, l.port) for l in plan.listeners],
            [(p.name, t, p.wellKnownPort) for p in classic.ALL for t in ("tcp", "udp")])


class StatusAndRegistrySettingsTests(SynchronousTestCase):
    """
    The C{status:} and C{registry:} sections.
    """

    def settings(self, text):
        from portserver.config import parseConfig
        specs, status, registry, _, found = parseConfig(
            "services: []\n" + text, "test.yaml", {})
        return status, registry, [str(p) for p in found]

    def test_endpointPrerequisitesLocated(self):
        """
        A C{systemd:} endpoint outside socket activation (before: C{IndexError}) and an
        C{ssl:} endpoint whose key file is missing, or without pyOpenSSL (before:
        C{ModuleNotFoundError}), are located errors saying what is missing, not
        tracebacks.
        """
        self.patch(os, "environ", {k: v for k, v in os.environ.items()
                                   if not k.startswith("LISTEN_")})
        _, _, found = self.settings(
            'status:\n  listen: "systemd:domain=INET:index=0"\n'
            '  token: "0123456789abcdef0123"\n')
        self.assertEqual(len(found), 1)
        self.assertIn("test.yaml:3:3: status: 'listen' 'systemd:domain=INET:index=0': no "
                      "socket was passed at that index", found[0])
        self.assertIn("LISTEN_FDS", found[0])
        _, _, found = self.settings(
            'status:\n  listen: "ssl:8443:privateKey=/nonexistent/key.pem"\n'
            '  token: "0123456789abcdef0123"\n')
        self.assertEqual(len(found), 1)
        try:
            import OpenSSL  # noqa: F401
        except ImportError:
            self.assertIn("the ssl: endpoint needs a module that is not installed "
                          "(OpenSSL): for ssl:, pip install 'twisted[tls]'", found[0])
        else:
            self.assertIn("cannot read a file it names (/nonexistent/key.pem", found[0])

    def test_endpointProblemWording(self):
        """
        Each kind of parser failure has its own sentence, and anything else names the
        exception.
        """
        from portserver.config import endpointProblem
        self.assertIn("cannot read a file it names (/k.pem: No such file or directory)",
                      endpointProblem("ssl:1:privateKey=/k.pem",
                                      FileNotFoundError(2, "No such file or directory",
                                                        "/k.pem")))
        self.assertIn("is not a Twisted server endpoint string (bad)",
                      endpointProblem("nope:1", ValueError("bad")))
        self.assertIn("RuntimeError: odd", endpointProblem("x:1", RuntimeError("odd")))

    def test_defaults(self):
        """
        Without the sections, the status service listens on loopback port 8790 and the
        registry keeps 1000 closed connections, expires UDP flows after 60 s, and logs
        ended connections to C{connections.log}.
        """
        status, registry, found = self.settings("")
        self.assertEqual(found, [])
        self.assertEqual(status.listen, "tcp:8790:interface=127.0.0.1")
        self.assertEqual((registry.closedLimit, registry.udpIdle, registry.connectionLog),
                         (1000, 60.0, os.path.join(os.getcwd(), "connections.log")))

    def test_connectionLog(self):
        """
        C{connection_log} takes a path, or C{off} (or null) for none; C{true} and an empty
        path are errors naming the line.
        """
        self.assertEqual(self.settings("registry: {connection_log: /var/log/c.log}\n")[1]
                         .connectionLog, "/var/log/c.log")
        for off in ("off", "null", "false"):
            self.assertIsNone(self.settings(f"registry: {{connection_log: {off}}}\n")[1]
                              .connectionLog)
        for bad in ("true", '""'):
            _, _, found = self.settings(f"registry:\n  connection_log: {bad}\n")
            self.assertEqual(len(found), 1, found)
            self.assertIn("test.yaml:3:", found[0])
            self.assertIn("connection_log", found[0])

    def test_connectionLogRelativeToStartDirectory(self):
        """
        A relative C{connection_log} is made absolute from the directory the server is
        started in (where twistd puts its pid file and log), never from the config
        file's directory: for the bundled config that is inside the installed package.
        """
        start = os.path.abspath(self.mktemp())
        os.makedirs(start)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(start)
        from portserver.config import parseConfig
        packaged = "/usr/lib/python3/site-packages/portserver/etc/portserver.yaml"
        for text, expected in [
                ("", "connections.log"), ("registry: {connection_log: logs/c.log}\n",
                                          "logs/c.log"),
                ("registry: {connection_log: ../c.log}\n", "../c.log")]:
            registry = parseConfig("services: []\n" + text, packaged, {})[2]
            self.assertEqual(registry.connectionLog,
                             os.path.normpath(os.path.join(start, expected)), text)
        plan = loadPlan(SHIPPED_CONFIG, PROVIDERS, rule=RULE, dualStack=True,
                        servicePort=FakeServices())
        self.assertEqual(plan.config.registry.connectionLog,
                         os.path.join(start, "connections.log"))

    def test_closedLimitBounded(self):
        """
        C{closed_limit} has a maximum: a huge number is a located error, not an
        C{OverflowError} when the registry is made (nor memory for a billion records).
        """
        _, registry, found = self.settings("registry:\n  closed_limit: 1000000\n")
        self.assertEqual((found, registry.closedLimit), ([], 1000000))
        _, _, found = self.settings(
            "registry:\n  closed_limit: 100000000000000000000000000\n")
        self.assertEqual(found, [
            "test.yaml:3:3: registry: 'closed_limit' must be 0 to 1000000"])

    def test_registryAndDrainDurationsBounded(self):
        """
        C{registry.udp_idle} and C{shutdown.drain} refuse durations too long to schedule,
        infinite or not a number, each at its key, naming the maximum.
        """
        for value in ("1.0e+300", ".inf", ".nan", "31536001"):
            _, _, found = self.settings(
                f"registry:\n  udp_idle: {value}\nshutdown:\n  drain: {value}\n")
            self.assertEqual(len(found), 2, (value, found))
            self.assertTrue(found[0].startswith("test.yaml:3:3: registry: 'udp_idle'"))
            self.assertTrue(found[1].startswith("test.yaml:5:3: shutdown: 'drain'"))
            for problem in found:
                self.assertIn("at most 31536000 (a year)", problem)
        _, registry, found = self.settings("registry:\n  udp_idle: 31536000\n")
        self.assertEqual((found, registry.udpIdle), ([], 31536000.0))

    def test_statusOff(self):
        """
        C{status: off}, C{status:} (null) and C{listen: null} each turn the status
        service off.
        """
        for text in ("status: off\n", "status:\n", "status: {listen: null}\n"):
            status, _, found = self.settings(text)
            self.assertEqual((status.listen, found), (None, []), text)

    def test_errorsAtTheirKeys(self):
        """
        A bad endpoint string and bad registry values are reported at their keys.
        """
        _, _, found = self.settings(
            "status:\n  listen: 'bogus:1'\nregistry:\n  closed_limit: -1\n  udp_idle: x\n")
        self.assertEqual(len(found), 3)
        self.assertTrue(found[0].startswith("test.yaml:3:3: status: 'listen' 'bogus:1' is not "
                                            "a Twisted server endpoint string"), found[0])
        self.assertEqual(found[1], "test.yaml:5:3: registry: 'closed_limit' must be 0 to "
                                   "1000000")
        self.assertTrue(found[2].startswith("test.yaml:6:3: registry: 'udp_idle' must be"))


class BundledExamplesTests(SynchronousTestCase):
    """
    The commented examples in the bundled config are valid configuration.
    """

    def test_commentedExamplesValid(self):
        """
        Uncommenting every commented-out service of C{etc/portserver.yaml} (with an
        existing directory for C{http}'s root) gives a config that loads, with the four
        non-classic protocols in it.
        """
        import re

        from portserver.plugins import discover

        root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
            tests.__file__))), "etc", "portserver.yaml")
        www = os.path.abspath(self.mktemp())
        os.makedirs(www)
        lines = []
        with open(root) as f:
            for line in f.read().splitlines():
                line = re.sub(r"^  # - name", "  - name", line)
                match = re.match(r"^  #   (.*)$", line)
                lines.append("    " + match.group(1) if match else line)
        text = "\n".join(lines).replace("/srv/www", www)
        plan = loadPlan(root, discover().providers, portOffset=10000,
                        rule=PrivilegeRule(1024, "test"), dualStack=True, text=text)
        protocols = {spec.protocol for spec in plan.config.services}
        self.assertLessEqual({"http", "smtp", "exec", "forward"}, protocols)

    def test_missingOptionNamed(self):
        """
        A required option that is missing is reported by name, at the service's options.
        """
        from portserver.protocols.smtp import smtp

        _, problems = parseServices(
            "services:\n  - name: mail\n    protocol: smtp\n    options: {domains: [a.b]}\n",
            "m.yaml", {"smtp": smtp})
        [problem] = problems
        self.assertTrue(str(problem).startswith(
            "m.yaml:4:14: service 'mail': options: option 'maildir': is required"), problem)
