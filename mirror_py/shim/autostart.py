"""PYTHONPATH mode and shared sessions: what the shim does at start-up when no ``mirror-py exec`` prepared the
environment.

- ``MIRROR_PY_TARGET`` set and no session: start one in lease mode (a process of its own, never inside this
  interpreter), take its environment, and share it with every child through the inherited variables.
- ``MIRROR_PY_FETCH_ENV`` set (``mirror-py session start`` exports): ask the session for the target's
  environment, so secrets never pass through the user's shell.
- ``MIRROR_PY_LEASE`` set: hold a connection to the session's lease socket for this process's lifetime; the
  session ends when the last holder exits.
"""

from __future__ import annotations

import os
import sys

_lease: list[object] = []


def _session_python(lib: str) -> str:
    """The interpreter that has mirror-py's dependencies: the venv that holds ``lib``, else this one."""
    path = os.path.abspath(lib)
    for _ in range(5):
        if os.path.exists(os.path.join(path, "pyvenv.cfg")):
            candidate = os.path.join(path, "bin", "python")
            if os.access(candidate, os.X_OK):
                return candidate
        path = os.path.dirname(path)
    return sys.executable


def start_session(lib: str) -> None:
    import subprocess

    from ..terminal import printable
    from . import ready_line

    env = dict(os.environ)
    env["MIRROR_PY_NO_AUTOSTART"] = "1"  # the session's own interpreter must not start another session
    env["PYTHONPATH"] = lib + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(
        [_session_python(lib), "-m", "mirror_py", "_serve", "--mode", "lease"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        ready = ready_line.read_ready(proc)
    finally:
        proc.stdout.close()
    if ready is None:
        err = proc.stderr.read().decode("utf-8", "replace").strip()
        proc.wait()
        raise RuntimeError(err.splitlines()[-1] if err else f"the session exited with code {proc.returncode}")
    proc.stderr.close()
    for note in ready.get("notes", ()):
        sys.stderr.write(printable(f"mirror-py: {note}") + "\n")
    os.environ.update(ready["env"])


def fetch_environment() -> None:
    from . import errors, rpc

    reply = rpc.call({"op": "env"})
    if "err" in reply:
        raise errors.to_exception(reply["err"])
    env = dict(reply["ok"]["env"])
    # The session's PYTHONPATH is the shim's directory plus that of the shell that started it. A process that
    # joined through a PYTHONPATH of its own holding the shim (an IDE's .env adds the project's paths) keeps
    # it, so its children see the same paths it was started with.
    shim = env.get("PYTHONPATH", "").split(os.pathsep)[0]
    if shim and shim in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        env.pop("PYTHONPATH")
    os.environ.update(env)
    os.environ.pop("MIRROR_PY_FETCH_ENV", None)


def hold_lease() -> None:
    path = os.environ.get("MIRROR_PY_LEASE")
    if not path or _lease:
        return
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)  # not inherited by exec'd children
    sock.connect(path)
    _lease.append(sock)


def prepare(lib: str) -> None:
    """Runs before install(): after it, MIRROR_PY_SESSION and the target's environment are in os.environ."""
    if not os.environ.get("MIRROR_PY_SESSION"):
        start_session(lib)
    elif os.environ.get("MIRROR_PY_FETCH_ENV"):
        fetch_environment()
    hold_lease()
