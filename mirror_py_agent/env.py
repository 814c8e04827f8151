"""The target process's environment, read from /proc so the app sees what the target's main process saw."""

from __future__ import annotations

import os


def read_environ(args: dict) -> dict:
    if args.get("own"):
        # Exec'd into the target container: the runtime gave this process the container's environment.
        return dict(os.environ)
    pid = args.get("pid")
    if pid is None:
        return {}
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise ValueError("pid must be a positive integer")
    with open(f"/proc/{pid}/environ", "rb") as f:
        raw = f.read()
    env = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            key, _, value = item.partition(b"=")
            env[os.fsdecode(key)] = os.fsdecode(value)
    return env
