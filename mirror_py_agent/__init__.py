"""The mirror-py agent: runs in the target with only the standard library and cbor2's pure-Python codec."""
