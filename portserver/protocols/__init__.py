"""
The built-in protocol implementations, one module per family.
"""
