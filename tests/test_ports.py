"""
Tests for L{portserver.ports}: IANA port classes, the privileged-port rule and
/etc/services lookups. Nothing here reads the host: files, platform and lookups are injected.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from portserver.ports import (
    DYNAMIC,
    REGISTERED,
    UNPRIVILEGED_START_FILE,
    WELL_KNOWN,
    PrivilegeRule,
    canBindPrivileged,
    lookupServicePort,
    portClass,
)


class FakeFile:
    """
    A stand-in for reading one file: returns C{text} (or raises C{error}) and records
    the paths it was asked for.
    """

    def __init__(self, text: str = "", error: Exception | None = None):
        self.text = text
        self.error = error
        self.paths: list[str] = []

    def __call__(self, path: str) -> str:
        self.paths.append(path)
        if self.error is not None:
            raise self.error
        return self.text


class PortClassTests(SynchronousTestCase):
    """
    L{portClass} follows RFC 6335's ranges exactly.
    """

    def test_wellKnown(self):
        """
        0 and 1023, the ends of the well-known range, are well-known.
        """
        self.assertEqual(portClass(0), WELL_KNOWN)
        self.assertEqual(portClass(1023), WELL_KNOWN)

    def test_registered(self):
        """
        1024 and 49151, the ends of the registered range, are registered.
        """
        self.assertEqual(portClass(1024), REGISTERED)
        self.assertEqual(portClass(49151), REGISTERED)

    def test_dynamic(self):
        """
        49152 and 65535, the ends of the dynamic range, are dynamic.
        """
        self.assertEqual(portClass(49152), DYNAMIC)
        self.assertEqual(portClass(65535), DYNAMIC)

    def test_outOfRange(self):
        """
        A number that is not a port (-1, 65536) raises L{ValueError} naming it.
        """
        for port in (-1, 65536):
            error = self.assertRaises(ValueError, portClass, port)
            self.assertIn(str(port), str(error))


class PrivilegeRuleTests(SynchronousTestCase):
    """
    L{PrivilegeRule.isPrivileged} and L{PrivilegeRule.fromHost}.
    """

    def test_defaultRuleBoundaries(self):
        """
        With the default rule, ports 1 to 1023 are privileged; 0 (no port) and 1024 are not.
        """
        rule = PrivilegeRule()
        self.assertEqual(rule.unprivilegedStart, 1024)
        self.assertEqual(
            [rule.isPrivileged(p) for p in (0, 1, 1023, 1024, 65535)],
            [False, True, True, False, False])

    def test_lowerStart(self):
        """
        A host that lets anyone bind from port 80 up makes only 1 to 79 privileged.
        """
        rule = PrivilegeRule(80, "test")
        self.assertEqual([rule.isPrivileged(p) for p in (1, 79, 80, 443)],
                         [True, True, False, False])

    def test_zeroStart(self):
        """
        A start of 0 makes no port privileged.
        """
        rule = PrivilegeRule(0, "test")
        self.assertEqual([rule.isPrivileged(p) for p in (0, 1, 7, 1023)],
                         [False, False, False, False])

    def test_fromHostLinuxReadsSysctl(self):
        """
        On Linux the rule comes from C{net.ipv4.ip_unprivileged_port_start}, read from its
        /proc file, and says so.
        """
        readFile = FakeFile("80\n")
        rule = PrivilegeRule.fromHost(platform="linux", readFile=readFile)
        self.assertEqual(rule, PrivilegeRule(80, "net.ipv4.ip_unprivileged_port_start"))
        self.assertEqual(readFile.paths, [UNPRIVILEGED_START_FILE])

    def test_fromHostLinuxUnreadable(self):
        """
        When the sysctl file cannot be read, the rule is 1024 and its source says the
        sysctl was unreadable.
        """
        rule = PrivilegeRule.fromHost(
            platform="linux", readFile=FakeFile(error=PermissionError(13, "denied")))
        self.assertEqual(rule, PrivilegeRule(1024, "default (sysctl unreadable)"))

    def test_fromHostLinuxGarbage(self):
        """
        When the sysctl file holds no number, the rule is 1024 and its source says the
        sysctl was unreadable.
        """
        rule = PrivilegeRule.fromHost(platform="linux", readFile=FakeFile("many\n"))
        self.assertEqual(rule, PrivilegeRule(1024, "default (sysctl unreadable)"))

    def test_fromHostOtherPlatform(self):
        """
        Elsewhere than Linux the rule is 1024, named after the platform, and no file is read.
        """
        readFile = FakeFile("80\n")
        rule = PrivilegeRule.fromHost(platform="darwin", readFile=readFile)
        self.assertEqual(rule, PrivilegeRule(1024, "darwin default"))
        self.assertEqual(readFile.paths, [])


class LookupServicePortTests(SynchronousTestCase):
    """
    L{lookupServicePort} turns /etc/services answers into a port or L{None}.
    """

    def test_found(self):
        """
        The lookup's port is returned; it is asked with the name and the transport.
        """
        calls = []

        def lookup(name, transport):
            calls.append((name, transport))
            return 4242

        self.assertEqual(lookupServicePort("myservice", "udp", lookup=lookup), 4242)
        self.assertEqual(calls, [("myservice", "udp")])

    def test_notFound(self):
        """
        A name the lookup does not know (it raises L{OSError}, as
        C{socket.getservbyname} does) gives L{None}.
        """
        def lookup(name, transport):
            raise OSError("service/proto not found")

        self.assertIsNone(lookupServicePort("nosuchservice", "tcp", lookup=lookup))


    def test_nameWithNul(self):
        """
        A name with an embedded NUL (which a YAML double-quoted string can hold) is not a
        known service, so it gives L{None} rather than an exception. The real lookup
        refuses it before reading /etc/services, so this does not depend on the host.
        """
        self.assertIsNone(lookupServicePort("ec\x00ho", "tcp"))


    def test_nameWithLoneSurrogate(self):
        """
        A name holding a lone surrogate (YAML's C{"\\uD800"}) is not a known service, so it
        gives L{None} rather than an exception. The real lookup cannot encode it, so this
        does not depend on the host.
        """
        self.assertIsNone(lookupServicePort("\ud800", "tcp"))



class CanBindPrivilegedTests(SynchronousTestCase):
    """
    L{canBindPrivileged}: root, or CAP_NET_BIND_SERVICE in the effective set.
    """

    def statusFile(self, capEff):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t{capEff}\n")
        return path

    def test_root(self):
        """
        Root may, whatever the capability sets say.
        """
        self.assertTrue(canBindPrivileged(lambda: 0, self.statusFile("0" * 16)))

    def test_capability(self):
        """
        A user with bit 10 (CAP_NET_BIND_SERVICE) in CapEff may; one without may not.
        """
        self.assertTrue(canBindPrivileged(lambda: 1000, self.statusFile("0000000000000400")))
        self.assertFalse(canBindPrivileged(lambda: 1000, self.statusFile("00000000000003ff")))

    def test_unreadable(self):
        """
        Where the status file cannot be read, only root is assumed able to.
        """
        self.assertFalse(canBindPrivileged(lambda: 1000, self.mktemp()))
