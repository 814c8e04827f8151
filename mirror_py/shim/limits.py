"""Modules whose networking happens in C: say so once, when they are imported, if mirror-py cannot reach it.

With the C-level layer on (mirror_py.shim.clayer) the libraries of :data:`C_LAYER_COVERS` go through the
target like Python's sockets, and nothing is said: their connects and lookups call libc, and c-ares (grpcio's
default resolver, pycares, aiodns), which sends its own DNS packets, has them answered by the target's
resolver (mirror_py.shim.nameservers). Without the layer — turned off, or on a machine it does not support —
their connections and lookups go out from this machine, and nothing else would tell the user why a database
"works locally but not through mirror-py".
"""

from __future__ import annotations

import sys

C_NETWORKING = {
    "psycopg2": "it talks to PostgreSQL through libpq; asyncpg or pg8000 go through mirror-py",
    "psycopg": "it talks to PostgreSQL through libpq; asyncpg or pg8000 go through mirror-py",
    "grpc": "grpcio's C core opens its own connections; grpclib goes through mirror-py",
    "uvloop": "it does sockets and DNS in C; the default asyncio event loop goes through mirror-py",
    "MySQLdb": "mysqlclient uses libmariadb or libmysqlclient; PyMySQL or aiomysql go through mirror-py",
    "pycares": "c-ares resolves names in C; the standard resolver (aiohttp's default) goes through mirror-py",
    "aiodns": "it resolves names with c-ares in C; the standard resolver goes through mirror-py",
    "confluent_kafka": "librdkafka opens its own connections; aiokafka or kafka-python go through mirror-py",
    "pylibmc": "libmemcached opens its own connections; pymemcache goes through mirror-py",
}

#: Modules whose connects and lookups call libc, which the C-level layer routes.
C_LAYER_COVERS = frozenset(("psycopg2", "psycopg", "grpc", "uvloop", "MySQLdb", "confluent_kafka", "pylibmc",
                            "pycares", "aiodns"))

class CNetworkingWatch:
    """A meta-path finder that never finds anything: it only notices the first import of a listed module."""

    def __init__(self) -> None:
        self.warned: set[str] = set()
        self._layer: list[bool] = []

    def layer_on(self) -> bool:
        if not self._layer:
            from . import clayer

            self._layer.append(clayer.supported() and clayer.enabled())
        return self._layer[0]

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name in C_NETWORKING and name not in self.warned:
            self.warned.add(name)
            if name in C_LAYER_COVERS and self.layer_on():
                return None
            sys.stderr.write(
                f"mirror-py: warning: {name} does its networking in C, so its connections bypass mirror-py and "
                f"go out from this machine: {self._why(name)}\n"
            )
        return None

    def _why(self, name: str) -> str:
        if name in C_LAYER_COVERS:
            from . import clayer

            if not clayer.supported():
                from .c_surface import UNSUPPORTED

                return f"{C_NETWORKING[name]} ({UNSUPPORTED})"
        return C_NETWORKING[name]
