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
from portserver.protocols.execute import execute  # noqa: F401
from portserver.protocols.forward import forward  # noqa: F401
from portserver.protocols.http import http  # noqa: F401
from portserver.protocols.smtp import smtp  # noqa: F401
