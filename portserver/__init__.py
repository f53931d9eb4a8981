"""
portserver: one Twisted process serving many well-known ports through protocol plugins.
"""

__version__ = "0.1.0"
