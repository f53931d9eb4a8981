"""
The rot13 protocol, declared for portserver: a thin drop-in (no __init__.py here).
"""

from portserver_rot13.protocol import rot13  # noqa: F401
