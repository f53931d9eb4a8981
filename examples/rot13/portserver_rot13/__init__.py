"""
portserver-rot13: a ROT13 line service, the example of a third-party portserver plugin.
"""
