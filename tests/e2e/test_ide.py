"""Debuggers and IDEs: the debugger's own connections stay on the laptop, the app's go to the pod.

Each test plays the IDE for real: a Debug Adapter Protocol client over debugpy's socket (VS Code's side), or
the listener pydevd connects back to (PyCharm's side); the app is tests/e2e/ide_app.py, whose handler calls a
service only the pod reaches and reads a variable only the pod has.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dotenv
import pytest

from mirror_py import dotenv_block

from .conftest import MIRROR_PY, ROOT, terminate
from .test_local_listeners import Dap, _free_port

APP = str(Path(__file__).with_name("ide_app.py"))
BREAK_LINE = next(n for n, text in enumerate(Path(APP).read_text().splitlines(), 1) if "the tests' breakpoint" in text)
EXPECTED = {"server": "loopback", "pod_only": "from-the-pod"}


def laptop_env(**extra: str) -> dict:
    """The laptop's environment as an IDE has it: no session, no pod variable, mirror-py importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_PY_") and k != "POD_ONLY"}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def _processes_naming(needle: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if needle.encode() in argv:
            found.append(int(pid))
    return found


def _none_left(needle: str, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while _processes_naming(needle) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _processes_naming(needle)


class IdeDap(Dap):
    """A DAP client that also answers the adapter's ``runInTerminal`` request as VS Code does for
    ``"console": "integratedTerminal"``: it starts the given command in a terminal of its own (here a process
    that is no child of the adapter), with the IDE's environment plus the request's variables."""

    def __init__(self, port: int, base_env: dict | None = None) -> None:
        super().__init__(port)
        self.base_env = base_env if base_env is not None else laptop_env()
        self.terminals: list[subprocess.Popen] = []

    def _read(self) -> dict:
        message = super()._read()
        if message.get("type") == "request" and message.get("command") == "runInTerminal":
            args = message["arguments"]
            env = dict(self.base_env)
            for name, value in (args.get("env") or {}).items():
                if value is None:
                    env.pop(name, None)
                else:
                    env[name] = value
            term = subprocess.Popen(args["args"], cwd=args.get("cwd") or None, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
            self.terminals.append(term)
            self.seq += 1
            body = json.dumps({"seq": self.seq, "type": "response", "request_seq": message["seq"],
                               "command": "runInTerminal", "success": True, "body": {"processId": term.pid}})
            self.sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body.encode()) + body.encode())
        return message

    def terminal_output(self) -> str:
        """What the terminals printed, once they have ended."""
        return "".join(term.communicate(timeout=60)[0] for term in self.terminals)


def debug_handler(dap: Dap, start: str, app: str = APP, terminal: bool = False, **arguments: object) -> dict:
    """What an IDE does with the app: initialize, ``start`` ("attach" or "launch"), a breakpoint in the
    handler, configurationDone; at the breakpoint it evaluates the pod's variable and the service's answer,
    then continues until the debuggee ends and disconnects. Returns what the evaluations showed."""
    dap.send("initialize", adapterID="python", clientID="mirror-py-tests", pathFormat="path",
             linesStartAt1=True, columnsStartAt1=True, supportsRunInTerminalRequest=terminal)
    assert dap.wait("response", "initialize")["success"]
    dap.send(start, **arguments)
    dap.wait("event", "initialized")
    dap.send("setBreakpoints", source={"path": app}, breakpoints=[{"line": BREAK_LINE}])
    assert dap.wait("response", "setBreakpoints")["body"]["breakpoints"][0]["verified"]
    dap.send("configurationDone")
    assert dap.wait("response", "configurationDone")["success"]
    assert dap.wait("response", start)["success"]
    stopped = dap.wait("event", "stopped")["body"]
    assert stopped["reason"] == "breakpoint"
    dap.send("stackTrace", threadId=stopped["threadId"], levels=1)
    frame = dap.wait("response", "stackTrace")["body"]["stackFrames"][0]
    assert (frame["name"], frame["line"]) == ("handler", BREAK_LINE)
    seen = {}
    for expression in ("os.environ['POD_ONLY']", "answer['server']"):
        dap.send("evaluate", expression=expression, frameId=frame["id"], context="repl")
        reply = dap.wait("response", "evaluate")
        assert reply["success"], reply
        seen[expression] = reply["body"]["result"]
    dap.send("continue", threadId=stopped["threadId"])
    dap.wait("event", "terminated")
    dap.send("disconnect")
    return seen


AT_THE_BREAKPOINT = {"os.environ['POD_ONLY']": "'from-the-pod'", "answer['server']": "'loopback'"}


# --- a terminal: mirror-py exec -- python -m debugpy --listen … --wait-for-client app.py ----------------------


def test_debugpy_under_exec_stops_in_the_handler_with_the_pods_view(pod):
    port = _free_port()
    proc = subprocess.Popen(
        [*MIRROR_PY, "exec", "--target", f"pid/{pod.pid}", "--", sys.executable, "-m", "debugpy",
         "--listen", f"127.0.0.1:{port}", "--wait-for-client", APP],
        env=laptop_env(), cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    dap = None
    try:
        dap = Dap(port)
        seen = debug_handler(dap, "attach", justMyCode=True)
        out, err = proc.communicate(timeout=60)
    except BaseException:
        err = terminate(proc)
        raise AssertionError(f"debug session failed; mirror-py stderr:\n{err}") from None
    finally:
        if dap is not None:
            dap.close()
    assert seen == AT_THE_BREAKPOINT
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == EXPECTED, out + err
    assert _none_left(f"127.0.0.1:{port}"), "debugpy is still running"


# --- a session and an IDE's .env --------------------------------------------------------------------------------


@contextlib.contextmanager
def session_in(env_file: Path, pod, cwd: Path | None = None) -> Iterator[dict]:
    """``session start --write-env`` for the test's body, ``session stop --write-env`` after it."""
    start = subprocess.run([*MIRROR_PY, "session", "start", "--target", f"pid/{pod.pid}", "--write-env",
                            str(env_file)], capture_output=True, text=True, timeout=120, env=laptop_env(),
                           cwd=str(cwd or ROOT))
    assert start.returncode == 0, start.stderr
    held = dotenv_block.held(str(env_file))
    try:
        yield held
    finally:
        stop = subprocess.run([*MIRROR_PY, "session", "stop", "--write-env", str(env_file)], capture_output=True,
                              text=True, timeout=60, env=laptop_env(), cwd=str(cwd or ROOT))
        assert stop.returncode == 0, stop.stderr


def _gone(path: str, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not os.path.exists(path)


def test_a_plain_python_app_loading_the_env_file_joins_the_session(pod, tmp_path):
    env_file = tmp_path / ".env"
    mine = "# the project's own\nDEBUG=1\nNAME='a b'\nPYTHONPATH=src\n"
    env_file.write_text(mine)
    with session_in(env_file, pod) as held:
        text = env_file.read_text()
        assert text.startswith(mine) and dotenv_block.END in text
        assert "s3cr3t" not in text and "from-the-pod" not in text  # the pod's environment is not on disk
        values = dotenv.dotenv_values(env_file)
        assert values["DEBUG"] == "1" and values["MIRROR_PY_SESSION"] == held["MIRROR_PY_SESSION"]
        # The variables must be there when the interpreter starts (the shim comes in through PYTHONPATH), as an
        # IDE's run or python-dotenv's `dotenv run` gives them; load_dotenv() inside the app would be too late.
        dotenv_run = [sys.executable, "-m", "dotenv", "-f", str(env_file), "run", "--", sys.executable]
        run = subprocess.run([*dotenv_run, APP], capture_output=True, text=True, timeout=120,
                             env=laptop_env(PYTHONPATH=""))
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout.strip().splitlines()[-1]) == EXPECTED
        # The project's own PYTHONPATH reaches the app behind the shim's directory, and stays in its
        # environment after it fetched the pod's, so its children have it too.
        show = "import os; print(os.environ['POD_ONLY'], os.environ['PYTHONPATH'])"
        paths = subprocess.run([*dotenv_run, "-c", show], capture_output=True, text=True, timeout=120,
                               env=laptop_env(PYTHONPATH=""))
        assert paths.returncode == 0, paths.stderr
        pod_only, pythonpath = paths.stdout.split()
        assert pod_only == "from-the-pod" and pythonpath.split(os.pathsep)[1:] == ["src"], paths.stdout
        # Starting again (a second debug run's pre-launch task) leaves one block, naming the new session, and
        # stops the one the file named before.
        again = subprocess.run([*MIRROR_PY, "session", "start", "--target", f"pid/{pod.pid}", "--write-env",
                                str(env_file)], capture_output=True, text=True, timeout=120, env=laptop_env())
        assert again.returncode == 0, again.stderr
        assert env_file.read_text().count(dotenv_block.END) == 1
        newer = dotenv_block.held(str(env_file))["MIRROR_PY_SESSION"]
        assert newer != held["MIRROR_PY_SESSION"]
        assert _gone(held["MIRROR_PY_SESSION"]), "starting again left the file's earlier session running"
    assert env_file.read_text() == mine
    assert _gone(newer), "session stop --write-env left the session running"


def test_stop_with_the_env_file_of_a_session_already_ended(pod, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_bytes(b"A=1")
    start = subprocess.run([*MIRROR_PY, "session", "start", "--target", f"pid/{pod.pid}", "--write-env",
                            str(env_file)], capture_output=True, text=True, timeout=120, env=laptop_env())
    assert start.returncode == 0, start.stderr
    session = dotenv_block.held(str(env_file))["MIRROR_PY_SESSION"]
    subprocess.run([*MIRROR_PY, "session", "stop"], check=True, capture_output=True,
                   env=laptop_env(MIRROR_PY_SESSION=session))
    assert _gone(session)
    stop = subprocess.run([*MIRROR_PY, "session", "stop", "--write-env", str(env_file)], capture_output=True,
                          text=True, timeout=60, env=laptop_env())
    assert stop.returncode == 0 and "already ended" in stop.stderr, stop.stderr
    assert env_file.read_bytes() == b"A=1"


def test_write_env_to_a_path_that_cannot_be_written_is_one_line_and_stops_the_session(pod, tmp_path):
    path = tmp_path / "no-such-dir" / ".env"
    start = subprocess.run([*MIRROR_PY, "session", "start", "--target", f"pid/{pod.pid}", "--write-env",
                            str(path)], capture_output=True, text=True, timeout=120, env=laptop_env())
    assert start.returncode == 1
    assert start.stderr.strip().splitlines()[-1].startswith("mirror-py: error: --write-env: cannot write")
    assert "Traceback" not in start.stderr and "export" not in start.stdout


# --- VS Code: the debug adapter launches the app with the env file's variables ---------------------------------


@contextlib.contextmanager
def adapter(env: dict) -> Iterator[tuple[subprocess.Popen, int]]:
    """debugpy's adapter as VS Code's Python extension starts it: in the laptop's environment, not the
    session's (the env file applies to the program it launches)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "debugpy.adapter", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                terminate(proc)
                raise AssertionError("the debug adapter did not end after the debug session") from None


def env_file_values(env_file: Path) -> dict:
    return {k: v for k, v in dotenv.dotenv_values(env_file).items() if v is not None}


def launch_with_env_file(env_file: Path, program: str, cwd: str, console: str = "internalConsole",
                         **more: object) -> tuple[dict, str]:
    """A VS Code "launch" of ``program`` with ``envFile``: the debugger extension reads the file (after the
    preLaunchTask has run) and hands its variables to the adapter as the launch's env. Returns the
    evaluations and what the debuggee printed."""
    env = env_file_values(env_file)
    terminal = console == "integratedTerminal"
    with adapter(laptop_env(PYTHONPATH="")) as (_adapter, port):
        dap = IdeDap(port)
        try:
            seen = debug_handler(dap, "launch", app=program, terminal=terminal, program=program, cwd=cwd, env=env,
                                 console=console, justMyCode=True, **more)
            with contextlib.suppress(EOFError, OSError):
                while True:
                    dap._read()
            printed = dap.terminal_output()
        finally:
            dap.close()
            for term in dap.terminals:
                if term.poll() is None:
                    terminate(term)
    printed += "".join(m["body"]["output"] for m in dap.seen if m.get("type") == "event"
                       and m.get("event") == "output" and m["body"].get("category") == "stdout")
    return seen, printed


def last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


@pytest.mark.parametrize("console", ["internalConsole", "integratedTerminal"])
def test_vscode_launch_through_the_adapter_with_the_env_file(pod, tmp_path, console):
    env_file = tmp_path / ".env"
    with session_in(env_file, pod):
        seen, printed = launch_with_env_file(env_file, APP, str(tmp_path), console=console)
    assert seen == AT_THE_BREAKPOINT
    assert last_json(printed) == EXPECTED, printed
    assert env_file.read_text() == ""


# --- PyCharm: pydevd connects back to the IDE's port on the laptop ----------------------------------------------


class FakeIde:
    """The port PyCharm listens on for its debuggee: accepts pydevd's connection, says which protocol
    version it speaks and lets the program run (CMD_VERSION, CMD_RUN), then reads until the debuggee ends."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.peers: list[tuple[str, int]] = []
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.server.settimeout(120)
        try:
            conn, peer = self.server.accept()
        except OSError:
            return
        self.peers.append(peer[:2])
        with conn:
            conn.sendall(b"501\t1\t1.1\tUNIX\tID\n101\t3\t\n")
            conn.settimeout(120)
            with contextlib.suppress(OSError):
                while chunk := conn.recv(65536):
                    self.received += chunk

    def close(self) -> None:
        self.server.close()
        self.thread.join(timeout=30)


def pydevd_script() -> str:
    import debugpy

    return str(Path(debugpy.__file__).parent / "_vendored" / "pydevd" / "pydevd.py")


def pycharm_debug_argv(port: int, program: str) -> list[str]:
    """How PyCharm starts a run configuration under its debugger: pydevd.py as the program, told to connect
    to the IDE's port, and the script as --file."""
    return [sys.executable, pydevd_script(), "--multiprocess", "--client", "127.0.0.1", "--port", str(port),
            "--file", program]


def test_pydevd_connects_back_to_the_ide_on_the_laptop_while_the_app_reaches_the_pod(pod, tmp_path):
    env_file = tmp_path / ".env"
    ide = FakeIde()
    try:
        with session_in(env_file, pod):
            env = laptop_env(PYTHONPATH="")
            env.update({k: v for k, v in dotenv.dotenv_values(env_file).items() if v is not None})
            run = subprocess.run(pycharm_debug_argv(ide.port, APP), capture_output=True, text=True, timeout=120,
                                 env=env, cwd=str(tmp_path))
    finally:
        ide.close()
    assert run.returncode == 0, run.stderr
    assert ide.peers and ide.peers[0][0] == "127.0.0.1", run.stderr  # it arrived at the laptop's listener
    assert ide.received, "pydevd said nothing to the IDE"
    assert json.loads(run.stdout.strip().splitlines()[-1]) == EXPECTED, run.stdout + run.stderr


def test_a_laptop_listener_does_not_take_a_port_a_sidecar_of_the_pod_serves(pod, tmp_path):
    """The other half of the rule: the laptop's listener (not the session's) loses to one in the pod."""
    from .test_local_listeners import pod_http

    ide = FakeIde()
    try:
        with pod_http(pod, ide.port, "sidecar"):
            code = ("import json, urllib.request; print(urllib.request.urlopen("
                    f"'http://127.0.0.1:{ide.port}/x', timeout=10).read().decode())")
            run = subprocess.run([*MIRROR_PY, "exec", "--target", f"pid/{pod.pid}", "--", sys.executable, "-c", code],
                                 capture_output=True, text=True, timeout=120, env=laptop_env(), cwd=str(ROOT))
    finally:
        ide.close()
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1])["server"] == "sidecar"
    assert ide.peers == []
