"""examples/vscode and examples/pycharm, run the way each IDE runs them, against a sandbox pod.

The files are copied into a workspace with the test's app as app.py and a mirror-py.toml naming the sandbox
pod; everything else is read from the example files themselves: the tasks' and run configurations' commands,
the env file they name, the order (start, then the env file is read, then the program; stop after).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from mirror_py.config import load_config

from .conftest import ROOT
from .test_ide import (
    APP,
    AT_THE_BREAKPOINT,
    EXPECTED,
    FakeIde,
    _gone,
    env_file_values,
    laptop_env,
    last_json,
    launch_with_env_file,
    pycharm_debug_argv,
)

EXAMPLES = ROOT / "examples"
USERS_OWN = "# the project's own\nDEBUG=1\n"


def workspace(tmp_path: Path, example: str, pod) -> Path:
    ws = tmp_path / "ws"
    shutil.copytree(EXAMPLES / example, ws)
    assert load_config(str(ws / "mirror-py.toml")).target.path == "deploy/api"  # the example's own target
    (ws / "mirror-py.toml").write_text(f'[target]\npath = "pid/{pod.pid}"\n')
    shutil.copy(APP, ws / "app.py")
    (ws / ".env").write_text(USERS_OWN)
    return ws


def run(argv: list[str], cwd: Path) -> None:
    import subprocess

    done = subprocess.run(argv, cwd=str(cwd), env=laptop_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{shlex.join(argv)}: {done.stderr}"


# --- VS Code ----------------------------------------------------------------------------------------------------


def jsonc(path: Path) -> dict:
    """VS Code's JSON with comments: // and /* */ comments outside strings, and trailing commas."""
    text = path.read_text()
    out, i, in_string = [], 0, False
    while i < len(text):
        c = text[i]
        if in_string:
            out.append(c)
            if c == "\\":
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
            out.append(c)
        elif text.startswith("//", i):
            i = text.find("\n", i)
            i = len(text) if i < 0 else i
            continue
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
            continue
        else:
            out.append(c)
        i += 1
    return json.loads(re.sub(r",(\s*[}\]])", r"\1", "".join(out)))


def vscode_substitute(value: str, ws: Path) -> str:
    """The variables the example files may use, as VS Code resolves them; any other one fails the test."""
    known = {"workspaceFolder": str(ws), "command:python.interpreterPath": sys.executable}

    def one(match: re.Match) -> str:
        assert match.group(1) in known, f"the example uses ${{{match.group(1)}}}, which this test cannot resolve"
        return known[match.group(1)]

    return re.sub(r"\$\{([^}]+)\}", one, value)


def run_task(tasks: dict, label: str, ws: Path) -> None:
    task = next(t for t in tasks["tasks"] if t["label"] == label)
    assert task["type"] == "process"
    argv = [vscode_substitute(a, ws) for a in [task["command"], *task.get("args", [])]]
    run(argv, Path(vscode_substitute(task.get("options", {}).get("cwd", "${workspaceFolder}"), ws)))


def test_vscode_example_starts_the_session_debugs_the_app_in_it_and_stops_it(pod, tmp_path):
    ws = workspace(tmp_path, "vscode", pod)
    tasks = jsonc(ws / ".vscode" / "tasks.json")
    config = jsonc(ws / ".vscode" / "launch.json")["configurations"][0]
    assert (config["type"], config["request"]) == ("debugpy", "launch")
    env_file = Path(vscode_substitute(config["envFile"], ws))
    assert env_file == ws / ".env"

    run_task(tasks, config["preLaunchTask"], ws)
    session = env_file_values(env_file)["MIRROR_PY_SESSION"]
    try:
        # Then VS Code's debugger extension reads the env file and the adapter launches the program.
        program = vscode_substitute(config["program"], ws)
        seen, printed = launch_with_env_file(env_file, program, str(ws), console=config.get("console",
                                                                                            "integratedTerminal"))
    finally:
        run_task(tasks, config["postDebugTask"], ws)
    assert seen == AT_THE_BREAKPOINT
    assert last_json(printed) == EXPECTED, printed
    assert env_file.read_text() == USERS_OWN
    assert _gone(session), "the stop task left the session running"


# --- PyCharm ----------------------------------------------------------------------------------------------------


class RunConfiguration:
    """A PyCharm Python run configuration (.run/*.run.xml) and the command line PyCharm builds from it."""

    def __init__(self, path: Path, project: Path) -> None:
        self.project = project
        self.element = ET.parse(path).getroot().find("configuration")
        assert self.element is not None and self.element.get("type") == "PythonConfigurationType", path
        self.name = self.element.get("name")
        self.options = {o.get("name"): o.get("value") for o in self.element.findall("option")}

    def value(self, name: str, default: str = "") -> str:
        return (self.options.get(name) or default).replace("$PROJECT_DIR$", str(self.project))

    def argv(self) -> list[str]:
        """``python [-m] SCRIPT PARAMETERS`` (the project's interpreter is this test's)."""
        script = self.value("SCRIPT_NAME")
        head = ["-m", script] if self.value("MODULE_MODE") == "true" else [script]
        return [sys.executable, *shlex.split(self.value("INTERPRETER_OPTIONS")), *head,
                *shlex.split(self.value("PARAMETERS"))]

    def before_launch(self) -> list[str]:
        method = self.element.find("method")
        return [] if method is None else [o.get("run_configuration_name") for o in method.findall("option")
                                          if o.get("name") == "RunConfigurationTask" and o.get("enabled") == "true"]

    def environment(self) -> dict:
        """The parent's environment (PARENT_ENVS), then the env files, then the configuration's own
        variables; content roots appended to PYTHONPATH (ADD_CONTENT_ROOTS)."""
        env = laptop_env(PYTHONPATH="") if self.value("PARENT_ENVS") == "true" else {}
        for path in filter(None, self.value("ENV_FILES").split(";")):
            env.update(env_file_values(Path(path)))
        env.update({e.get("name"): e.get("value") for e in self.element.iterfind("envs/env")})
        if self.value("ADD_CONTENT_ROOTS") == "true":
            env["PYTHONPATH"] = ":".join(p for p in (env.get("PYTHONPATH"), str(self.project)) if p)
        return env


def test_pycharm_example_runs_and_debugs_the_app_in_the_target(pod, tmp_path):
    import subprocess

    ws = workspace(tmp_path, "pycharm", pod)
    configs = {c.name: c for c in (RunConfiguration(p, ws) for p in sorted((ws / ".run").glob("*.run.xml")))}
    app = configs["app.py in the target (mirror-py)"]
    assert app.value("ENV_FILES") == str(ws / ".env")
    for name in app.before_launch():
        run(configs[name].argv(), Path(configs[name].value("WORKING_DIRECTORY")))
    session = env_file_values(ws / ".env")["MIRROR_PY_SESSION"]
    ide = FakeIde()
    try:
        cwd = app.value("WORKING_DIRECTORY")
        ran = subprocess.run(app.argv(), env=app.environment(), cwd=cwd, capture_output=True, text=True,
                             timeout=120)
        # The same configuration under PyCharm's debugger: pydevd runs the script and connects back to the IDE.
        script = app.argv()[-1]
        debugged = subprocess.run(pycharm_debug_argv(ide.port, script), env=app.environment(), cwd=cwd,
                                  capture_output=True, text=True, timeout=120)
    finally:
        ide.close()
        stop = configs["mirror-py stop session"]
        run(stop.argv(), Path(stop.value("WORKING_DIRECTORY")))
    assert ran.returncode == 0, ran.stderr
    assert last_json(ran.stdout) == EXPECTED
    assert debugged.returncode == 0, debugged.stderr
    assert ide.peers and ide.peers[0][0] == "127.0.0.1" and ide.received, debugged.stderr
    assert last_json(debugged.stdout) == EXPECTED
    assert (ws / ".env").read_text() == USERS_OWN
    assert _gone(session), "the stop configuration left the session running"
