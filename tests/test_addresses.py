"""
Tests for L{portserver.addresses}.
"""

from __future__ import annotations

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from portserver.addresses import ipAddress


class IPAddressTests(SynchronousTestCase):
    """
    L{ipAddress} reads an address as portserver compares it.
    """

    def test_plain(self):
        """
        IPv4 and IPv6 addresses are read as such.
        """
        self.assertEqual(ipAddress("192.0.2.1"), ipaddress.IPv4Address("192.0.2.1"))
        self.assertEqual(ipAddress("2001:db8::1"), ipaddress.IPv6Address("2001:db8::1"))

    def test_mapped(self):
        """
        An IPv4-mapped IPv6 address is the IPv4 address it carries.
        """
        self.assertEqual(ipAddress("::ffff:127.0.0.1"), ipaddress.IPv4Address("127.0.0.1"))

    def test_notAnAddress(self):
        """
        A name or an empty string is no address.
        """
        self.assertIsNone(ipAddress("localhost"))
        self.assertIsNone(ipAddress(""))

    def test_scope(self):
        """
        A scope is kept unless it is asked to be dropped.
        """
        self.assertEqual(str(ipAddress("fe80::1%lo")), "fe80::1%lo")
        self.assertEqual(ipAddress("fe80::1%lo", dropScope=True),
                         ipaddress.IPv6Address("fe80::1"))
