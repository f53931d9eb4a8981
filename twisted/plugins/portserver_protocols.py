"""
The built-in portserver protocols, declared as Twisted plugins.
"""

from portserver.protocols.classic import (  # noqa: F401
    chargen,
    daytimeProtocol,
    discard,
    echo,
    qotd,
    timeProtocol,
)
