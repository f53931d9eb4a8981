"""
Tests for L{portserver.plan}: listeners from services, the port offset, the privileged
flag, conflicts between services, the C{--check} table and the dual-stack probe.

Services are written as one-line YAML flow mappings, so service N of a snippet is on
line N + 1. Nothing here depends on the host.
"""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from portserver.config import ConfigError, ServiceSpec, parseServices
from portserver.plan import (
    BINDV6ONLY_FILE,
    Listener,
    formatPlan,
    hostIsDualStack,
    loadPlan,
    planListeners,
)
from portserver.ports import DYNAMIC, REGISTERED, WELL_KNOWN, PrivilegeRule
from portserver.protocols import classic

PATH = "test.yaml"
RULE = PrivilegeRule(1024, "test")
PROVIDERS = {p.name: p for p in classic.ALL}


def noServices(name: str, transport: str) -> None:
    """
    A fake /etc/services that knows no name.
    """
    return None


def servicesText(*services: str) -> str:
    """
    A config whose services are the given flow-mapping bodies, one per line from line 2.
    """
    return "services:\n" + "".join(f"  - {{{body}}}\n" for body in services)


def specs(testCase, *services: str) -> list[ServiceSpec]:
    """
    The specs of a valid config made by L{servicesText}.
    """
    result, problems = parseServices(servicesText(*services), PATH, PROVIDERS, noServices)
    testCase.assertEqual([str(p) for p in problems], [])
    return result


def plan(testCase, *services: str, portOffset: int = 0, rule: PrivilegeRule = RULE,
         dualStack: bool = True) -> tuple[list[Listener], list[str]]:
    """
    L{planListeners} on the services; the problems as text.
    """
    listeners, problems = planListeners(specs(testCase, *services), portOffset, rule,
                                        dualStack)
    return listeners, [str(p) for p in problems]


def conflicts(testCase, *services: str, dualStack: bool = True) -> list[str]:
    """
    The conflicts L{planListeners} finds among the services.
    """
    return plan(testCase, *services, dualStack=dualStack)[1]


class OffsetTests(SynchronousTestCase):
    """
    C{--port-offset} moves the well-known ports only.
    """

    def test_offsetBelow1024(self):
        """
        A port below 1024 is moved by the offset; the listener remembers the configured
        port and the protocol's well-known port.
        """
        [listener], problems = plan(self, "name: e, protocol: echo", portOffset=10000)
        self.assertEqual(problems, [])
        self.assertEqual((listener.port, listener.configuredPort, listener.wellKnownPort),
                         (10007, 7, 7))

    def test_offsetBoundary(self):
        """
        1023 is moved; 1024 and 5000 stay where they are.
        """
        listeners, problems = plan(self, "name: a, protocol: echo, port: 1023",
                                   "name: b, protocol: echo, port: 1024",
                                   "name: c, protocol: echo, port: 5000",
                                   portOffset=10000)
        self.assertEqual(problems, [])
        self.assertEqual([(l.port, l.configuredPort) for l in listeners],
                         [(11023, 1023), (1024, 1024), (5000, 5000)])

    def test_noOffset(self):
        """
        Without an offset every port is the configured one.
        """
        listeners, _ = plan(self, "name: a, protocol: echo", "name: b, protocol: echo, port: 2000")
        self.assertEqual([l.port for l in listeners], [7, 2000])

    def test_offsetTo65535(self):
        """
        An offset that lands exactly on 65535 is fine.
        """
        [listener], problems = plan(self, "name: a, protocol: echo, port: 535",
                                    portOffset=65000)
        self.assertEqual(problems, [])
        self.assertEqual(listener.port, 65535)

    def test_offsetBeyond65535(self):
        """
        An offset that pushes a port past 65535 is an error at the port, naming the
        service, the port, the offset and the result; the other services are still planned.
        """
        listeners, problems = plan(self, "name: a, protocol: echo, port: 1000",
                                   "name: b, protocol: echo, port: 2000",
                                   portOffset=65000)
        self.assertEqual(problems, ["test.yaml:2:37: service 'a': port 1000 with "
                                    "--port-offset 65000 is 66000, beyond 65535"])
        self.assertEqual([(l.service, l.port) for l in listeners], [("b", 2000)])

    def test_wellKnownPortFromProtocol(self):
        """
        A service on another port still reports its protocol's well-known port.
        """
        [listener], _ = plan(self, "name: q, protocol: qotd, port: 2017")
        self.assertEqual((listener.port, listener.wellKnownPort), (2017, 17))


class ListenerTests(SynchronousTestCase):
    """
    The listeners themselves: one per transport, privileged flag, class, description.
    """

    def test_onePerTransport(self):
        """
        A service gets one listener per transport, in the order given, services in
        config order.
        """
        listeners, _ = plan(self, "name: a, protocol: echo, transports: [udp, tcp]",
                            "name: b, protocol: time, interface: 127.0.0.1")
        self.assertEqual(
            [(l.service, l.protocol, l.transport, l.interface, l.port) for l in listeners],
            [("a", "echo", "udp", "0.0.0.0", 7), ("a", "echo", "tcp", "0.0.0.0", 7),
             ("b", "time", "tcp", "127.0.0.1", 37)])

    def test_privilegedByRule(self):
        """
        Whether a listener is privileged follows the rule given: below its start, and
        not at or above it.
        """
        services = ("name: a, protocol: echo",
                    "name: b, protocol: echo, port: 79",
                    "name: c, protocol: echo, port: 80",
                    "name: d, protocol: echo, port: 1024")
        for start, expected in ((1024, [True, True, True, False]),
                                (80, [True, True, False, False]),
                                (0, [False, False, False, False])):
            listeners, _ = plan(self, *services, rule=PrivilegeRule(start, "test"))
            self.assertEqual([l.privileged for l in listeners], expected, start)

    def test_privilegedAfterOffset(self):
        """
        The privileged flag is about the port really bound: echo moved to 10007 is not
        privileged.
        """
        [listener], _ = plan(self, "name: a, protocol: echo", portOffset=10000)
        self.assertFalse(listener.privileged)

    def test_portClass(self):
        """
        A listener's C{portClass} is the IANA class of the port it binds.
        """
        listeners, _ = plan(self, "name: a, protocol: echo",
                            "name: b, protocol: echo, port: 10007",
                            "name: c, protocol: echo, port: 50000")
        self.assertEqual([l.portClass for l in listeners], [WELL_KNOWN, REGISTERED, DYNAMIC])

    def test_asDict(self):
        """
        C{asDict} gives the listener's fields under their documented keys.
        """
        [listener], _ = plan(self, "name: a, protocol: echo, interface: 127.0.0.1",
                             portOffset=10000)
        self.assertEqual(listener.asDict(), {
            "service": "a", "protocol": "echo", "transport": "tcp", "host": "127.0.0.1",
            "port": 10007, "configured_port": 7, "well_known_port": 7,
            "class": REGISTERED, "privileged": False,
            "limits": {"idle_timeout": 300, "deadline": None, "max_connections": None,
                       "max_per_source": None, "rate_per_source": None,
                       "max_output": 1024 * 1024, "close_grace": 10.0}})

    def test_describe(self):
        """
        C{describe} names service, transport and address, IPv6 hosts in brackets.
        """
        listeners, _ = plan(self, "name: a, protocol: echo, interface: 127.0.0.1",
                            "name: b, protocol: echo, interface: '::1', transports: [udp]")
        self.assertEqual([l.describe() for l in listeners],
                         ["a/tcp 127.0.0.1:7", "b/udp [::1]:7"])


class ConflictTests(SynchronousTestCase):
    """
    Two services cannot share one port of one transport on overlapping interfaces.
    """

    def test_sameAddress(self):
        """
        The same interface, port and transport twice is a conflict, reported at the later
        service's port, naming both services and the line of the earlier one.
        """
        self.assertEqual(
            conflicts(self, "name: a, protocol: echo, interface: 127.0.0.1",
                      "name: b, protocol: echo, port: 7, interface: 127.0.0.1"),
            ["test.yaml:3:37: service 'b': tcp port 7 on 127.0.0.1 overlaps service 'a' "
             "(127.0.0.1, line 2): a host cannot give one tcp port to two services"])

    def test_allIPv4AndOneIPv4(self):
        """
        0.0.0.0 takes every IPv4 address, so it conflicts with 127.0.0.1, whichever
        comes first and whatever the dual-stack setting.
        """
        for dualStack in (True, False):
            for first, second in (("0.0.0.0", "127.0.0.1"), ("127.0.0.1", "0.0.0.0")):
                found = conflicts(self, f"name: a, protocol: echo, interface: {first}",
                                  f"name: b, protocol: echo, interface: {second}",
                                  dualStack=dualStack)
                self.assertEqual(len(found), 1, (first, second, dualStack))
                self.assertIn("service 'b'", found[0])
                self.assertIn("overlaps service 'a'", found[0])

    def test_allIPv6AndIPv4DualStack(self):
        """
        :: conflicts with an IPv4 address (and with 0.0.0.0) only when the host is dual
        stack, where a socket on :: takes IPv4 too.
        """
        for ipv4 in ("127.0.0.1", "0.0.0.0"):
            services = ("name: a, protocol: echo, interface: '::'",
                        f"name: b, protocol: echo, interface: {ipv4}")
            self.assertEqual(len(conflicts(self, *services, dualStack=True)), 1, ipv4)
            self.assertEqual(conflicts(self, *services, dualStack=False), [], ipv4)

    def test_allIPv6AndOneIPv6(self):
        """
        :: conflicts with ::1 whatever the dual-stack setting.
        """
        for dualStack in (True, False):
            self.assertEqual(
                conflicts(self, "name: a, protocol: echo, interface: '::1'",
                          "name: b, protocol: echo, interface: '::'", dualStack=dualStack),
                ["test.yaml:3:5: service 'b': tcp port 7 on :: overlaps service 'a' "
                 "(::1, line 2): a host cannot give one tcp port to two services"])

    def test_allIPv4AndOneIPv6(self):
        """
        0.0.0.0 takes IPv4 only, so it does not conflict with ::1, even on a dual-stack
        host.
        """
        self.assertEqual(
            conflicts(self, "name: a, protocol: echo, interface: 0.0.0.0",
                      "name: b, protocol: echo, interface: '::1'", dualStack=True),
            [])

    def test_differentAddresses(self):
        """
        127.0.0.1 and 127.0.0.2 are different sockets: no conflict.
        """
        self.assertEqual(
            conflicts(self, "name: a, protocol: echo, interface: 127.0.0.1",
                      "name: b, protocol: echo, interface: 127.0.0.2"),
            [])

    def test_differentTransports(self):
        """
        The same port over tcp for one service and udp for another is no conflict.
        """
        self.assertEqual(
            conflicts(self, "name: a, protocol: echo, transports: [tcp]",
                      "name: b, protocol: echo, transports: [udp]"),
            [])

    def test_eachTransportReported(self):
        """
        Two tcp+udp services on one address conflict once per transport.
        """
        found = conflicts(self, "name: a, protocol: echo, transports: [tcp, udp]",
                          "name: b, protocol: discard, port: 7, transports: [tcp, udp]")
        self.assertEqual(len(found), 2)
        self.assertIn("service 'b': tcp port 7 on 0.0.0.0 overlaps service 'a'", found[0])
        self.assertIn("service 'b': udp port 7 on 0.0.0.0 overlaps service 'a'", found[1])

    def test_differentPorts(self):
        """
        Services on different ports of one address do not conflict (7 and 10007 without
        an offset).
        """
        self.assertEqual(conflicts(self, "name: a, protocol: echo",
                                   "name: b, protocol: echo, port: 10007"), [])

    def test_conflictAfterOffset(self):
        """
        Conflicts are found on the ports really bound: echo on 7 moved by 10000 collides
        with a service configured on 10007.
        """
        _, problems = plan(self, "name: a, protocol: echo",
                           "name: b, protocol: echo, port: 10007", portOffset=10000)
        self.assertEqual(
            problems,
            ["test.yaml:3:37: service 'b': tcp port 10007 on 0.0.0.0 overlaps service 'a' "
             "(0.0.0.0, line 2): a host cannot give one tcp port to two services"])

    def test_loadPlanRefusesConflicts(self):
        """
        L{loadPlan} refuses a file with conflicting services, with the dual-stack setting
        it is given.
        """
        text = servicesText("name: a, protocol: echo, interface: '::'",
                            "name: b, protocol: echo, interface: 127.0.0.1")
        error = self.assertRaises(ConfigError, loadPlan, PATH, PROVIDERS, rule=RULE,
                                  dualStack=True, servicePort=noServices, text=text)
        self.assertEqual([p.service for p in error.problems], ["b"])
        plan = loadPlan(PATH, PROVIDERS, rule=RULE, dualStack=False,
                        servicePort=noServices, text=text)
        self.assertEqual(len(plan.listeners), 2)


class SelfForwardTests(SynchronousTestCase):
    """
    A C{forward} service may not target one of the server's own listeners.
    """

    def problems(self, *services, portOffset=0):
        from portserver.protocols.forward import forward
        providers = dict(PROVIDERS, forward=forward)
        try:
            loadPlan(PATH, providers, portOffset=portOffset, rule=RULE, dualStack=True,
                     servicePort=noServices, text=servicesText(*services))
        except ConfigError as e:
            return [str(p) for p in e.problems]
        return []

    def test_ownListenerRefused(self):
        """
        A forward to its own port, or to another service's, on loopback or through a
        listener on every address, is a located error naming the listener; with
        C{host}/C{port}, a C{tcp:} target (positional or named), and after
        C{--port-offset} (the bound port counts).
        """
        for target in ("host: 127.0.0.1, port: 8080", "target: 'tcp:localhost:8080'",
                       "target: 'tcp:host=127.0.0.2:port=8080'"):
            [problem] = self.problems(
                f"name: loop, protocol: forward, port: 8080, options: {{{target}}}")
            self.assertIn("service 'loop': forward target", problem)
            self.assertIn("is this server's own listener loop/tcp 0.0.0.0:8080", problem)
        [problem] = self.problems(
            "name: e, protocol: echo, interface: 127.0.0.1",
            "name: f, protocol: forward, port: 8080, "
            "options: {host: 127.0.0.1, port: 10007}", portOffset=10000)
        self.assertIn("own listener e/tcp 127.0.0.1:10007", problem)

    def test_otherTargetsAccepted(self):
        """
        Another port, another host, a UDP-only service's port, and an endpoint type
        other than TCP are fine.
        """
        self.assertEqual(self.problems(
            "name: u, protocol: echo, port: 9000, transports: [udp]",
            "name: a, protocol: forward, port: 8080, options: {host: 127.0.0.1, port: 8081}",
            "name: b, protocol: forward, port: 8082, options: {host: 192.0.2.1, port: 8080}",
            "name: c, protocol: forward, port: 8083, options: {host: 127.0.0.1, port: 9000}",
            "name: d, protocol: forward, port: 8084, "
            "options: {target: 'unix:/run/x.sock'}"), [])


def columns(line: str) -> list[str]:
    """
    The cells of a row of L{formatPlan}'s table (cells are separated by two or more
    spaces; a cell holds at most single spaces).
    """
    return re.split(r" {2,}", line)


class FormatPlanTests(SynchronousTestCase):
    """
    L{formatPlan}, the table C{--check} prints.
    """

    def format(self, text: str, **kwargs) -> list[str]:
        kwargs.setdefault("rule", RULE)
        plan = loadPlan(PATH, PROVIDERS, dualStack=True, servicePort=noServices,
                        text=text, **kwargs)
        return formatPlan(plan).split("\n")

    def test_table(self):
        """
        The table has a header and one row per listener showing the actual port and,
        when moved, the configured one, the well-known port and whether it is privileged;
        then a blank line and a summary.
        """
        lines = self.format(servicesText(
            "name: e, protocol: echo, interface: 127.0.0.1, transports: [tcp, udp]",
            "name: q, protocol: qotd, port: 20017"), portOffset=10000,
            rule=PrivilegeRule(10008, "test"))
        self.assertEqual([columns(l) for l in lines[:4]], [
            ["SERVICE", "PROTOCOL", "TRANSPORT", "INTERFACE", "PORT", "WELL-KNOWN",
             "PRIVILEGED"],
            ["e", "echo", "tcp", "127.0.0.1", "10007 (from 7)", "7", "yes"],
            ["e", "echo", "udp", "127.0.0.1", "10007 (from 7)", "7", "yes"],
            ["q", "qotd", "tcp", "0.0.0.0", "20017", "17", "no"],
        ])
        self.assertEqual(lines[4:6], [
            "",
            "3 listener(s) for 2 service(s) in test.yaml; 2 on privileged ports (below "
            "10008, test); port offset 10000"])

    def test_limitsShown(self):
        """
        After the table, the effective limits of each service and transport, under the
        config's key names (a TCP listener's connection limits and timeouts, a UDP
        listener's reply rate), null for none.
        """
        lines = self.format(servicesText(
            "name: e, protocol: echo, transports: [tcp, udp], limits: {deadline: 60}"))
        start = lines.index("LIMITS (null: none)")
        self.assertEqual(lines[start + 1:], [
            "e/tcp: idle_timeout 300, deadline 60, max_connections null, max_per_source "
            "null, rate_per_source null, max_output 1048576, close_grace 10.0",
            "e/udp: udp_rate_per_source null"])

    def test_columnsAligned(self):
        """
        Each column starts at the same place on every row.
        """
        lines = self.format(servicesText("name: echo-long-name, protocol: echo",
                                         "name: t, protocol: time"))
        start = lines[0].index("  PORT  ") + 2  # not the PORT in TRANSPORT
        self.assertEqual([l[start:].split()[0] for l in lines[:3]], ["PORT", "7", "37"])

    def test_noOffset(self):
        """
        Without an offset the summary does not mention one and ports show no origin.
        """
        lines = self.format(servicesText("name: e, protocol: echo"))
        self.assertEqual(columns(lines[1])[4], "7")
        self.assertEqual(lines[3], "1 listener(s) for 1 service(s) in test.yaml; 1 on "
                                   "privileged ports (below 1024, test)")


class HostIsDualStackTests(SynchronousTestCase):
    """
    L{hostIsDualStack} reads C{net.ipv6.bindv6only}.
    """

    def test_bindv6onlyOff(self):
        """
        bindv6only 0 means a socket on :: takes IPv4 too: dual stack. The right file is read.
        """
        paths = []

        def readFile(path):
            paths.append(path)
            return "0\n"

        self.assertTrue(hostIsDualStack(readFile))
        self.assertEqual(paths, [BINDV6ONLY_FILE])

    def test_bindv6onlyOn(self):
        """
        bindv6only 1 means IPv6 sockets take IPv6 only: not dual stack.
        """
        self.assertFalse(hostIsDualStack(lambda path: "1\n"))

    def test_unreadable(self):
        """
        When the setting cannot be read (not Linux), the host is taken as dual stack,
        the common default.
        """
        def readFile(path):
            raise FileNotFoundError(2, "No such file or directory", path)

        self.assertTrue(hostIsDualStack(readFile))
