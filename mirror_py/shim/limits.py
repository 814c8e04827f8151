"""Modules whose networking happens in C, out of the shim's reach: say so once, when they are imported.

Their connections and lookups go out from this machine, not from the target, and nothing else would tell
the user why a database "works locally but not through mirror-py".
"""

from __future__ import annotations

import sys

C_NETWORKING = {
    "psycopg2": "it talks to PostgreSQL through libpq; asyncpg or pg8000 go through mirror-py",
    "psycopg": "it talks to PostgreSQL through libpq; asyncpg or pg8000 go through mirror-py",
    "grpc": "grpcio's C core opens its own connections; grpclib goes through mirror-py",
    "uvloop": "it does sockets and DNS in C; the default asyncio event loop goes through mirror-py",
    "MySQLdb": "mysqlclient uses libmysqlclient; PyMySQL or aiomysql go through mirror-py",
    "pycares": "c-ares resolves names in C; the standard resolver (aiohttp's default) goes through mirror-py",
    "aiodns": "it resolves names with c-ares in C; the standard resolver goes through mirror-py",
    "confluent_kafka": "librdkafka opens its own connections; aiokafka or kafka-python go through mirror-py",
    "pylibmc": "libmemcached opens its own connections; pymemcache goes through mirror-py",
}


class CNetworkingWatch:
    """A meta-path finder that never finds anything: it only notices the first import of a listed module."""

    def __init__(self) -> None:
        self.warned: set[str] = set()

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name in C_NETWORKING and name not in self.warned:
            self.warned.add(name)
            sys.stderr.write(
                f"mirror-py: warning: {name} does its networking in C, so its connections bypass mirror-py and "
                f"go out from this machine: {C_NETWORKING[name]}\n"
            )
        return None
