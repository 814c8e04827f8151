"""An example service: its configuration file, Redis and PostgreSQL all belong to the cluster.

Run locally through mirror-py and it reads the pod's /etc/config/app.yaml, talks to the `redis` and `postgres`
Services by their short names, and sees the pod's environment — no port-forwards, no copied secrets.
"""

from __future__ import annotations

import asyncio
import os
import socket

import asyncpg
import redis
from flask import Flask, jsonify

app = Flask(__name__)


def read_config(path: str = "/etc/config/app.yaml") -> dict:
    config = {}
    with open(path) as f:  # the pod's file, through mirror-py
        for line in f:
            if ":" in line and not line.startswith(" "):
                key, _, value = line.partition(":")
                config[key.strip()] = value.strip()
    return config


async def database_now() -> str:
    conn = await asyncpg.connect(host="postgres", user="app", database="postgres")
    try:
        return str(await conn.fetchval("select 'postgres ' || current_setting('server_version')"))
    finally:
        await conn.close()


@app.get("/")
def index() -> object:
    visits = redis.Redis(host="redis", port=6379, socket_timeout=5).incr("example:visits")
    return jsonify({
        "greeting": read_config().get("greeting"),
        "env": os.environ.get("APP_ENV"),
        "pod": socket.gethostname(),
        "visits": visits,
        "database": asyncio.run(database_now()),
    })


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
