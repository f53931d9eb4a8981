"""
C{twistd portserver}. The module is imported only when the plugin is used.
"""

from twisted.application.service import ServiceMaker

portserver = ServiceMaker(
    "portserver",
    "portserver.tap",
    "A pluggable protocol server: many well-known ports, one observable process.",
    "portserver",
)
