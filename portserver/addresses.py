"""
IP addresses as portserver compares them: an IPv4-mapped IPv6 address
(C{::ffff:1.2.3.4}) is the IPv4 address it carries.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def ipAddress(host: str, dropScope: bool = False) -> IPAddress | None:
    """
    The address C{host} names, IPv4-mapped IPv6 as IPv4, or L{None} when C{host} is
    not an address (a name, an empty string).

    @param dropScope: read C{fe80::1%eth0} as C{fe80::1}.
    """
    if dropScope:
        host = host.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
