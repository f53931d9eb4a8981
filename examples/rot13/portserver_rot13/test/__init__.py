"""
Tests for portserver-rot13, written with L{portserver.testing}: no sockets, no server.
"""
