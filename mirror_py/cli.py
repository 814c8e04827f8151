"""The ``mirror-py`` command line."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Callable, NoReturn

import click

from . import __version__
from .config import FLAG_KEYS, FLAG_VARIABLES, Config, ConfigError, flag_source, load_config
from .console import Console, MessageHandler, ProgressHandler
from .errors import MirrorError
from .kube.api import KubeContext
from .terminal import printable

_LOG_LEVELS = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}


def _setup_logging(verbose: int) -> None:
    """-v and -vv, or MIRROR_PY_LOG=debug|info|warning|error. Progress lines (what mirror-py chose and how
    long the agent took) show at the default level; -q style silence is MIRROR_PY_LOG=error. The word
    ``route`` (MIRROR_PY_LOG=route or route,debug; -v adds it) has interposed apps say where each
    destination went and which rule sent it there."""
    import os

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    words = os.environ.get("MIRROR_PY_LOG", "").lower().replace(",", " ").split()
    named = next((w for w in reversed(words) if w in _LOG_LEVELS), None)
    if named is not None and verbose == 0:
        level = _LOG_LEVELS[named]
    if verbose and "route" not in words:
        # The apps this command starts say where each destination went (mirror_py/shim/routes.py).
        os.environ["MIRROR_PY_LOG"] = ",".join([*words, "route"])
    # Libraries log on the root logger (and logging.error() on an unconfigured root prints "ERROR:root:" lines);
    # mirror-py reports what matters itself, in its own words (mirror_py/console.py).
    if not logging.getLogger().handlers:
        logging.getLogger().addHandler(logging.NullHandler())
    _console.reset(sys.stderr)  # the stream and the terminal's abilities as they are now
    root = logging.getLogger("mirror_py")
    root.handlers[:] = [MessageHandler(_console)]
    root.setLevel(level)
    root.propagate = False
    progress = logging.getLogger("mirror_py.progress")
    progress.setLevel(min(level, logging.INFO) if level < logging.ERROR else level)
    # Start-up steps share one updating line on a terminal at the default verbosity; with -v (more lines from
    # other loggers in between) and off a terminal each is a line of its own.
    progress.handlers[:] = [ProgressHandler(_console)] if _console.live and level >= logging.WARNING else []
    progress.propagate = not progress.handlers


_console = Console(sys.stderr)


def _fail(message: str) -> NoReturn:
    _console.follow(sys.stderr).error(message)  # ends a progress line the error interrupts first
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="mirror-py")
def main() -> None:
    """Run local Python code in the context of a pod: its network, DNS and environment."""


def _complete_target(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    from .completion import complete_target

    return complete_target(ctx, param, incomplete)


def _target_options(fn: Callable) -> Callable:
    """The target and session flags, shared by exec and _serve."""
    options = [
        click.option("-t", "--target", envvar=FLAG_VARIABLES["target"], shell_complete=_complete_target,
                     help="deploy/NAME, pod/NAME[/container/C], sts/, rs/, ds/, job/, svc/; or pid/PID, netns/NAME, "
                     "docker/NAME, podman/NAME"),
        click.option("-n", "--namespace", envvar=FLAG_VARIABLES["namespace"], help="Kubernetes namespace"),
        click.option("--kubeconfig", envvar=FLAG_VARIABLES["kubeconfig"], help="kubeconfig file"),
        click.option("--context", envvar=FLAG_VARIABLES["context"], help="kubeconfig context"),
        click.option("--request-timeout", type=float, envvar=FLAG_VARIABLES["request_timeout"],
                     help="seconds a Kubernetes API request may take (default 30)"),
        click.option("-f", "--config", "config_file", envvar=FLAG_VARIABLES["config"],
                     help="configuration file (TOML or JSON)"),
        click.option("--agent-python", envvar=FLAG_VARIABLES["agent_python"],
                     help="python interpreter in the target"),
        click.option("--agent-mode", type=click.Choice(["auto", "exec", "ephemeral", "job"]),
                     envvar=FLAG_VARIABLES["agent_mode"], help="where the agent runs on Kubernetes"),
        click.option("--agent-image", envvar=FLAG_VARIABLES["agent_image"],
                     help="image of ephemeral, job and targetless agents"),
        click.option("--agent-namespace", envvar=FLAG_VARIABLES["agent_namespace"],
                     help="namespace of the agent pod of a session without a target"),
        click.option("--agent-startup-timeout", type=float, envvar=FLAG_VARIABLES["agent_startup_timeout"],
                     help="seconds to wait for the agent to start"),
        click.option("--env-file", envvar=FLAG_VARIABLES["env_file"],
                     help="dotenv file whose values override the target's"),
        click.option("--outgoing/--no-outgoing", default=None, envvar=FLAG_VARIABLES["outgoing"],
                     help="send outgoing connections through the target"),
        click.option("--dns/--no-dns", default=None, envvar=FLAG_VARIABLES["dns"], help="resolve names in the target"),
        click.option("--env/--no-env", default=None, envvar=FLAG_VARIABLES["env"],
                     help="take the target's environment"),
        click.option("--fs-mode", type=click.Choice(["local", "read", "write"]), envvar=FLAG_VARIABLES["fs_mode"],
                     help="files: all local, read the target's (default), or also write them"),
        click.option("--incoming", type=click.Choice(["mirror", "steal", "off"]), envvar=FLAG_VARIABLES["incoming"],
                     help="traffic reaching the target on the ports the app listens on: a copy, all of it, or none"),
        click.option("-v", "--verbose", count=True, help="-v progress, -vv debug"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _load(ctx: click.Context, config_file: str | None, flags: dict) -> Config:
    overrides = {FLAG_KEYS[name]: value for name, value in flags.items() if name in FLAG_KEYS}
    sources = {}
    for name in flags:
        if name in FLAG_KEYS and flags[name] is not None:
            from_env = ctx.get_parameter_source(name) == click.core.ParameterSource.ENVIRONMENT
            sources[FLAG_KEYS[name]] = flag_source(name, from_env)
    try:
        return load_config(config_file, overrides, override_sources=sources)
    except ConfigError as exc:
        _fail(str(exc))


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@_target_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
@click.pass_context
def exec(ctx: click.Context, config_file: str | None, verbose: int, command: tuple[str, ...], **flags: object) -> None:
    """Run COMMAND with its network, DNS and environment from the target.

    Example: mirror-py exec --target pid/4242 -- python app.py
    """
    _setup_logging(verbose)
    cfg = _load(ctx, config_file, flags)
    from .session.session import StartInterrupted, run_command

    try:
        code = asyncio.run(run_command(cfg, list(command)))
    except MirrorError as exc:
        _fail(str(exc))
        return
    except StartInterrupted as exc:
        _stopped(exc)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _stopped(exc: Exception) -> NoReturn:
    signum = getattr(exc, "signum", 15)
    _console.follow(sys.stderr).end()
    _console.line(f"mirror-py: {exc}; nothing was left behind")
    sys.exit(128 + signum)


@main.command("_serve", hidden=True)
@_target_options
@click.option("--mode", type=click.Choice(["stdin", "daemon", "lease"]), default="stdin")
@click.pass_context
def serve(ctx: click.Context, config_file: str | None, verbose: int, mode: str, **flags: object) -> None:
    """Runs a session for mirror_py.connect(), `session start` or the shim's auto-start: prints the app's
    environment as one JSON line, then serves (see mirror_py.session.daemon)."""
    _setup_logging(verbose)
    cfg = _load(ctx, config_file, flags)
    from .session.daemon import serve as serve_session
    from .session.session import StartInterrupted

    try:
        asyncio.run(serve_session(cfg, mode))
    except MirrorError as exc:
        _fail(str(exc))
    except StartInterrupted as exc:
        _stopped(exc)


def _kube_options(fn: Callable) -> Callable:
    for option in reversed([
        click.option("-n", "--namespace", envvar=FLAG_VARIABLES["namespace"], help="Kubernetes namespace"),
        click.option("--kubeconfig", envvar=FLAG_VARIABLES["kubeconfig"], help="kubeconfig file"),
        click.option("--context", envvar=FLAG_VARIABLES["context"], help="kubeconfig context"),
        click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True), default=30.0,
                     envvar=FLAG_VARIABLES["request_timeout"],
                     help="seconds a Kubernetes API request may take (default 30)"),
    ]):
        fn = option(fn)
    return fn


def _kube(kubeconfig: str | None, context: str | None, namespace: str | None,
          request_timeout: float) -> KubeContext:
    from .kube import api

    try:
        return api.load(kubeconfig, context, namespace, request_timeout)
    except MirrorError as exc:
        _fail(str(exc))


@main.command("ls")
@_kube_options
@click.option("--json", "as_json", is_flag=True, help="print the targets as one JSON object")
def ls(namespace: str | None, kubeconfig: str | None, context: str | None, request_timeout: float,
       as_json: bool) -> None:
    """List what can be targeted in a namespace, as --target takes it."""
    from .kube.listing import RESOURCES, list_targets

    kube = _kube(kubeconfig, context, namespace, request_timeout)
    try:
        rows, refused = list_targets(kube, kube.namespace)
    except MirrorError as exc:
        _fail(str(exc))
    if as_json:
        import json

        click.echo(json.dumps({"namespace": kube.namespace, "targets": [
            {"target": t, "containers": c.split(", ") if c else [], "state": s} for t, c, s in rows],
            "refused": refused}))
        sys.exit(1 if len(refused) == len(RESOURCES) else 0)
    if not rows and not refused:
        click.echo(f"nothing to target in namespace {kube.namespace}")
    elif rows:
        width = max(len(r[0]) for r in rows)
        cwidth = max(len(r[1]) for r in rows)
        click.echo(f"{'TARGET'.ljust(width)}  {'CONTAINERS'.ljust(cwidth)}  STATE   (namespace {kube.namespace})")
        for target, containers, state in rows:
            click.echo(f"{target.ljust(width)}  {containers.ljust(cwidth)}  {state}")
    for line in refused:
        click.echo(f"mirror-py: {line}", err=True)
    if len(refused) == len(RESOURCES):  # nothing could be listed at all
        sys.exit(1)


@main.command("doctor")
@_kube_options
@click.option("-t", "--target", envvar=FLAG_VARIABLES["target"], help="also check this target")
@click.option("--agent-python", default="python3", envvar=FLAG_VARIABLES["agent_python"])
@click.option("--json", "as_json", is_flag=True, help="print the checks as one JSON object")
def doctor(namespace: str | None, kubeconfig: str | None, context: str | None, request_timeout: float,
           target: str | None, agent_python: str, as_json: bool) -> None:
    """Check the cluster, RBAC for each agent mode, and the target; print what to fix."""
    from .kube.doctor import run_checks

    kube = _kube(kubeconfig, context, namespace, request_timeout)
    checks = run_checks(kube, kube.namespace, target, agent_python)
    if as_json:
        import json

        click.echo(json.dumps({"namespace": kube.namespace, "ok": all(c.ok for c in checks),
                               "checks": [{"ok": c.ok, "what": c.what, "fix": c.fix or None} for c in checks]}))
        sys.exit(0 if all(c.ok for c in checks) else 1)
    for check in checks:
        click.echo(f"{'ok ' if check.ok else 'FIX'}  {check.what}" + (f"\n     -> {check.fix}" if check.fix else ""))
    sys.exit(0 if all(c.ok for c in checks) else 1)


@main.group("config")
def config_group() -> None:
    """Validate configuration files and print the JSON Schema."""


def _leaves(data: object, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(data, dict) and data and prefix not in ("env.override",):
        out: list[tuple[str, object]] = []
        for key, value in data.items():
            out += _leaves(value, f"{prefix}.{key}" if prefix else key)
        return out
    return [(prefix, data)]


@config_group.command("check")
@click.argument("file", required=False)
@click.option("--show-secrets", is_flag=True, help="print env.override values instead of masking them")
def config_check(file: str | None, show_secrets: bool) -> None:
    """Validate FILE (or the discovered configuration) and print every effective value and its source."""
    import json

    try:
        cfg = load_config(file)
    except ConfigError as exc:
        _fail(str(exc))
    click.echo(f"configuration: {cfg.config_file or 'none found; defaults only'}")
    sources = cfg.sources
    for key, value in _leaves(cfg.model_dump(mode="json")):
        if key == "env.override" and isinstance(value, dict) and not show_secrets:
            value = {k: "***" for k in value}
        source = sources.get(key) or next((v for k, v in sources.items() if k.startswith(key + ".")), "default")
        click.echo(f"{key} = {json.dumps(value)}    # {source}")


@config_group.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of the configuration (also committed as mirror-py.schema.json)."""
    import json

    from .config import json_schema

    click.echo(json.dumps(json_schema(), indent=2, sort_keys=True))


@main.command("shim-path")
def shim_path() -> None:
    """Print the directory to put on PYTHONPATH: PYTHONPATH=$(mirror-py shim-path) MIRROR_PY_TARGET=... python app.py"""
    import os

    import sitecustomize_shim

    click.echo(os.path.dirname(os.path.abspath(sitecustomize_shim.__file__)))


@main.group("session")
def session_group() -> None:
    """A long-lived session shared by terminals and IDE run configurations (eval its exports, like ssh-agent)."""


_EXPORTED = ("MIRROR_PY_SESSION", "MIRROR_PY_SHIM_LIB", "MIRROR_PY_SHIM_SETTINGS", "PYTHONPATH")


@session_group.command("start")
@_target_options
@click.option("--write-env", "write_env", metavar="PATH",
              help="also write the variables that join the session into this dotenv file (an IDE's .env)")
@click.pass_context
def session_start(ctx: click.Context, config_file: str | None, verbose: int, write_env: str | None,
                  **flags: object) -> None:
    """Start a session in the background and print the shell exports that join it."""
    import os
    import shlex
    import subprocess

    from .shim import ready_line

    _load(ctx, config_file, flags)  # fail here, in one line, on a bad config
    argv = [sys.executable, "-m", "mirror_py", "_serve", "--mode", "daemon"]
    for name, value in flags.items():
        if value is not None and name in FLAG_VARIABLES:
            os.environ[FLAG_VARIABLES[name]] = str(value).lower() if isinstance(value, bool) else str(value)
    if config_file:
        os.environ["MIRROR_PY_CONFIG"] = config_file
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        ready = ready_line.read_ready(proc)
    except ready_line.SessionNotReady as exc:
        _fail(str(exc))
    if ready is None:
        err = proc.stderr.read().decode("utf-8", "replace").strip()
        proc.wait()
        _fail(err.splitlines()[-1].removeprefix("mirror-py: error: ") if err else "the session did not start")
    for note in ready.get("notes", ()):
        click.echo(printable(f"mirror-py: {note}"), err=True)
    env = ready["env"]
    if write_env:
        _write_env_block(write_env, env, proc.pid)
    for name in _EXPORTED:
        if name in env:
            click.echo(f"export {name}={shlex.quote(env[name])}")
    click.echo("export MIRROR_PY_FETCH_ENV=1")
    click.echo(f"echo 'mirror-py: session for {ready['info']['target']} (pid {ready['info']['pid']})' >&2")


def _write_env_block(path: str, env: dict, session_pid: int) -> None:
    """Joins the session from a dotenv file; a file that cannot be written stops the session just started.
    A session the file named before is stopped once the file names the new one: the file owns one session,
    so starting again (an IDE's pre-launch task after a run whose stop never came) leaves none behind."""
    import os
    import signal

    from . import dotenv_block

    try:
        before = dotenv_block.held(path).get("MIRROR_PY_SESSION")
        dotenv_block.write(path, env)
    except dotenv_block.DotenvError as exc:
        os.kill(session_pid, signal.SIGTERM)
        _fail(f"--write-env: {exc}")
    if before and before != env.get("MIRROR_PY_SESSION") and _shutdown(before):
        click.echo(f"mirror-py: stopped the session {path} named before", err=True)
    click.echo(f"mirror-py: {path} joins the session (mirror-py session stop --write-env {path} ends it)", err=True)


def _shutdown(session: str) -> bool:
    """Asks the session at ``session`` to stop; False when it was not running."""
    import os

    from .shim import rpc

    saved = os.environ.get("MIRROR_PY_SESSION")
    os.environ["MIRROR_PY_SESSION"] = session
    try:
        return "err" not in rpc.call({"op": "shutdown"}, timeout=30.0)
    except OSError:
        return False
    finally:
        rpc.disconnect_all()
        if saved is None:
            os.environ.pop("MIRROR_PY_SESSION", None)
        else:
            os.environ["MIRROR_PY_SESSION"] = saved


def _session_call(request: dict) -> dict:
    import os

    if not os.environ.get("MIRROR_PY_SESSION"):
        _fail("no session in this shell (MIRROR_PY_SESSION is not set); run: eval \"$(mirror-py session start ...)\"")
    from .shim import rpc

    try:
        reply = rpc.call(request)
    except OSError as exc:
        _fail(str(exc).removeprefix("mirror-py: "))
    if "err" in reply:
        _fail(f"{reply['err'].get('errno')}: {reply['err'].get('msg')}")
    return reply["ok"]


@session_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="print the status as one JSON object")
def session_status(as_json: bool) -> None:
    """Show the session this shell is joined to: its target and agent, and what it has done."""
    from .session.status_text import render

    info = _session_call({"op": "info"})
    if as_json:
        import json

        click.echo(json.dumps(info, sort_keys=True))
        return
    for line in render(info):
        click.echo(printable(line))


@session_group.command("stop")
@click.option("--write-env", "write_env", metavar="PATH",
              help="the dotenv file `session start --write-env` wrote: stop its session and take its lines out")
def session_stop(write_env: str | None) -> None:
    """Stop the session and print the exports that leave it."""
    if write_env:
        _stop_from_env_file(write_env)
        return
    _session_call({"op": "shutdown"})
    for name in (*_EXPORTED, "MIRROR_PY_FETCH_ENV"):
        click.echo(f"unset {name}")


def _stop_from_env_file(path: str) -> None:
    """Stops the session the file's block names, then takes the block out, even when that session has already
    ended (a machine restarted, a session stopped by hand): the file must not keep naming a dead session."""
    from . import dotenv_block

    try:
        held = dotenv_block.held(path)
    except dotenv_block.DotenvError as exc:
        _fail(f"--write-env: {exc}")
    session = held.get("MIRROR_PY_SESSION")
    if not session:
        click.echo(f"mirror-py: {path} has no mirror-py session lines; nothing to stop", err=True)
        return
    ended = _shutdown(session)
    try:
        dotenv_block.remove(path)
    except dotenv_block.DotenvError as exc:
        _fail(f"--write-env: {exc}")
    if not ended:
        click.echo(f"mirror-py: the session {path} named had already ended; its lines are removed", err=True)


def _hook_dir() -> str:
    import sysconfig

    return sysconfig.get_paths()["purelib"]


@main.command("install-hook")
def install_hook() -> None:
    """Install a .pth hook so that interpreters started with -I (which ignore PYTHONPATH) are interposed too.
    It does nothing unless a mirror-py session is named in the environment."""
    import os

    path = os.path.join(_hook_dir(), "mirror_py_hook.pth")
    with open(path, "w") as f:
        f.write("import mirror_py_pth\n")
    click.echo(f"installed {path}")


@main.command("uninstall-hook")
def uninstall_hook() -> None:
    """Remove the .pth hook."""
    import os

    path = os.path.join(_hook_dir(), "mirror_py_hook.pth")
    if os.path.exists(path):
        os.remove(path)
        click.echo(f"removed {path}")
    else:
        click.echo("no hook installed")


def _register_commands() -> None:
    """Commands that live in modules of their own, given the shared flags and helpers defined above."""
    from .completion import register as register_completion
    from .forward.command import register as register_port_forward

    register_port_forward(main, _target_options, _setup_logging, _load, _fail, _stopped)
    register_completion(main)


_register_commands()
