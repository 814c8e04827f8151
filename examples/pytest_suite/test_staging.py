"""Integration tests that run against the cluster's services, from the laptop.

    pytest --mirror-target deploy/api -n staging examples/pytest_suite   (or: python run.py, with the sandbox)
"""

import os
import socket
import urllib.request

APP_ENV = os.environ.get("APP_ENV")  # read at import: the session starts before collection


def test_configuration_comes_from_the_pod():
    assert APP_ENV == "staging"


def test_redis_service_answers():
    with socket.create_connection(("redis", 6379), timeout=5) as redis:
        redis.sendall(b"PING\r\n")
        assert redis.recv(100) == b"+PONG\r\n"


def test_api_service_serves_its_config():
    body = urllib.request.urlopen("http://api:8000/app.yaml", timeout=5).read().decode()
    assert body.startswith("greeting: hello from staging")


def test_something_local(mirror):
    # A block that must use this machine's network, e.g. a local fake.
    with mirror.local():
        try:
            socket.getaddrinfo("redis", 6379)
            resolvable = True
        except socket.gaierror:
            resolvable = False
    assert resolvable is False
