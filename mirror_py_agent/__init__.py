"""The mirror-py agent: runs in the target with only the standard library and cbor2's pure-Python codec.

Interposed interpreters import this package before pytest starts, so pytest must not try to rewrite it:
PYTEST_DONT_REWRITE
"""
