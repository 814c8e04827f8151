"""Name lookups under mirror-py that report how many requests the session sent to the agent for them.

Run by tests/e2e/test_dns_cache.py as ``dns_cache_app.py WHAT NAME [ARG]``; prints one JSON line.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time


def asked() -> int:
    """``dns`` requests the session has sent to its agent so far (each one a round trip)."""
    from mirror_py.shim import rpc

    return int(rpc.call({"op": "info"})["ok"].get("requests", {}).get("dns", 0))


def lookup(name: str) -> list:
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)})
    except socket.gaierror as exc:
        return [f"gaierror {exc.errno}: {exc.strerror}"]
    except OSError as exc:  # the session between two agents
        return [f"{type(exc).__name__}: {exc}"]


def main() -> None:
    what, name = sys.argv[1], sys.argv[2]
    if what == "one":  # the child of "again"
        print(json.dumps(lookup(name)))
        return
    out: dict = {"asked": [asked()], "answers": []}

    def step(answer: list) -> None:
        out["answers"].append(answer)
        out["asked"].append(asked())

    if what == "again":  # twice here, then once in a child process of the same session
        step(lookup(name))
        step(lookup(name))
        child = subprocess.run([sys.executable, __file__, "one", name], capture_output=True, text=True, check=True)
        step(json.loads(child.stdout))
    elif what == "expire":  # twice, the second time after ARG seconds
        step(lookup(name))
        time.sleep(float(sys.argv[3]))
        step(lookup(name))
    elif what == "concurrent":  # ARG threads at once
        count = int(sys.argv[3])
        barrier = threading.Barrier(count)
        answers: list = []

        def one() -> None:
            barrier.wait()
            answers.append(lookup(name))

        threads = [threading.Thread(target=one) for _ in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        step(sorted(set(map(tuple, answers))))
    elif what == "hosts":  # twice; then, after the test edits the pod's /etc/hosts, until the answer changes
        first = lookup(name)
        step(first)
        step(lookup(name))
        print("edit", flush=True)
        sys.stdin.readline()
        deadline = time.monotonic() + 30
        answer = lookup(name)
        while answer == first and time.monotonic() < deadline:
            time.sleep(0.1)
            answer = lookup(name)
        step(answer)
    else:
        raise SystemExit(f"unknown step {what!r}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
