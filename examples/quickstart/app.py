"""A small service-like script: configuration from the environment, an internal API by a name only the pod
knows, and Redis on the pod's own loopback. Run it with and without mirror-py to see the difference."""

import json
import os
import socket
import urllib.request


def main() -> None:
    print(f"hostname      {socket.gethostname()}")
    print(f"DATABASE_URL  {os.environ.get('DATABASE_URL', '(not set)')}")
    try:
        body = json.loads(urllib.request.urlopen("http://api.pod.internal:8081/hello", timeout=5).read())
        print(f"internal API  answered by pod {body['pod']!r} "
              f"({body['server']} server, saw client {body['client'][0]})")
    except OSError as exc:
        print(f"internal API  unreachable: {exc}")
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=5) as redis:
            redis.sendall(b"GET pod:name\r\n")
            reply = redis.recv(100).split(b"\r\n")
            print(f"redis         pod:name = {reply[1].decode() if len(reply) > 1 else reply}")
    except OSError as exc:
        print(f"redis         unreachable: {exc}")


if __name__ == "__main__":
    main()
