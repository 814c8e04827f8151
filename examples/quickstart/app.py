"""A small service-like script: configuration from the environment, Redis and an internal API by their
Service names. Run it with and without mirror-py to see the difference."""

import os
import socket
import urllib.request


def main() -> None:
    print(f"hostname      {socket.gethostname()}")
    print(f"APP_ENV       {os.environ.get('APP_ENV', '(not set)')}")
    secret = os.environ.get("DATABASE_PASSWORD")
    print(f"DB password   {'set (' + str(len(secret)) + ' characters)' if secret else '(not set)'}")
    try:
        with socket.create_connection(("redis", 6379), timeout=5) as redis:
            redis.sendall(b"PING\r\n")
            print(f"redis         {redis.recv(100).decode().strip()} from {redis.getpeername()[0]}")
    except OSError as exc:
        print(f"redis         unreachable: {exc}")
    try:
        first = urllib.request.urlopen("http://api:8000/app.yaml", timeout=5).read().decode().splitlines()[0]
        print(f"api service   {first}")
    except OSError as exc:
        print(f"api service   unreachable: {exc}")


if __name__ == "__main__":
    main()
