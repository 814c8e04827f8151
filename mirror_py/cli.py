"""The ``mirror-py`` command line."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Callable, NoReturn

import click

from . import __version__
from .config import FLAG_KEYS, FLAG_VARIABLES, Config, ConfigError, flag_source, load_config
from .errors import MirrorError
from .kube.api import KubeContext


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mirror-py: %(message)s"))
    root = logging.getLogger("mirror_py")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # Choices mirror-py made for the user (which pod, which container) are shown unless -q.
    logging.getLogger("mirror_py.progress").setLevel(logging.INFO if verbose >= 0 else logging.WARNING)


def _fail(message: str) -> NoReturn:
    click.echo(f"mirror-py: error: {message}", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="mirror-py")
def main() -> None:
    """Run local Python code in the context of a pod: its network, DNS and environment."""


def _target_options(fn: Callable) -> Callable:
    """The target and session flags, shared by exec and _serve."""
    options = [
        click.option("-t", "--target", envvar=FLAG_VARIABLES["target"],
                     help="deploy/NAME, pod/NAME[/container/C], sts/, rs/, ds/, job/, svc/; or pid/PID, netns/NAME, "
                     "docker/NAME, podman/NAME"),
        click.option("-n", "--namespace", envvar=FLAG_VARIABLES["namespace"], help="Kubernetes namespace"),
        click.option("--kubeconfig", envvar=FLAG_VARIABLES["kubeconfig"], help="kubeconfig file"),
        click.option("--context", envvar=FLAG_VARIABLES["context"], help="kubeconfig context"),
        click.option("-f", "--config", "config_file", envvar=FLAG_VARIABLES["config"],
                     help="configuration file (TOML or JSON)"),
        click.option("--agent-python", envvar=FLAG_VARIABLES["agent_python"],
                     help="python interpreter in the target"),
        click.option("--agent-startup-timeout", type=float, envvar=FLAG_VARIABLES["agent_startup_timeout"],
                     help="seconds to wait for the agent to start"),
        click.option("--env-file", envvar=FLAG_VARIABLES["env_file"],
                     help="dotenv file whose values override the target's"),
        click.option("--outgoing/--no-outgoing", default=None, envvar=FLAG_VARIABLES["outgoing"],
                     help="send outgoing connections through the target"),
        click.option("--dns/--no-dns", default=None, envvar=FLAG_VARIABLES["dns"], help="resolve names in the target"),
        click.option("--env/--no-env", default=None, envvar=FLAG_VARIABLES["env"],
                     help="take the target's environment"),
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
    from .session.session import run_command

    try:
        code = asyncio.run(run_command(cfg, list(command)))
    except MirrorError as exc:
        _fail(str(exc))
        return
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


@main.command("_serve", hidden=True)
@_target_options
@click.pass_context
def serve(ctx: click.Context, config_file: str | None, verbose: int, **flags: object) -> None:
    """Runs a session for mirror_py.connect(): prints the app's environment as one JSON line, then serves
    until stdin closes."""
    _setup_logging(verbose)
    cfg = _load(ctx, config_file, flags)
    from .session.session import serve_until_stdin_closes

    try:
        asyncio.run(serve_until_stdin_closes(cfg))
    except MirrorError as exc:
        _fail(str(exc))


def _kube_options(fn: Callable) -> Callable:
    for option in reversed([
        click.option("-n", "--namespace", envvar=FLAG_VARIABLES["namespace"], help="Kubernetes namespace"),
        click.option("--kubeconfig", envvar=FLAG_VARIABLES["kubeconfig"], help="kubeconfig file"),
        click.option("--context", envvar=FLAG_VARIABLES["context"], help="kubeconfig context"),
    ]):
        fn = option(fn)
    return fn


def _kube(kubeconfig: str | None, context: str | None, namespace: str | None) -> KubeContext:
    from .kube import api

    try:
        return api.load(kubeconfig, context, namespace)
    except MirrorError as exc:
        _fail(str(exc))


@main.command("ls")
@_kube_options
def ls(namespace: str | None, kubeconfig: str | None, context: str | None) -> None:
    """List what can be targeted in a namespace, as --target takes it."""
    from .kube.listing import list_targets

    kube = _kube(kubeconfig, context, namespace)
    try:
        rows = list_targets(kube, kube.namespace)
    except MirrorError as exc:
        _fail(str(exc))
    if not rows:
        click.echo(f"nothing to target in namespace {kube.namespace}")
        return
    width = max(len(r[0]) for r in rows)
    cwidth = max(len(r[1]) for r in rows)
    click.echo(f"{'TARGET'.ljust(width)}  {'CONTAINERS'.ljust(cwidth)}  STATE   (namespace {kube.namespace})")
    for target, containers, state in rows:
        click.echo(f"{target.ljust(width)}  {containers.ljust(cwidth)}  {state}")


@main.command("doctor")
@_kube_options
@click.option("-t", "--target", envvar=FLAG_VARIABLES["target"], help="also check this target")
@click.option("--agent-python", default="python3", envvar=FLAG_VARIABLES["agent_python"])
def doctor(namespace: str | None, kubeconfig: str | None, context: str | None, target: str | None,
           agent_python: str) -> None:
    """Check the cluster, RBAC for each agent mode, and the target; print what to fix."""
    from .kube.doctor import run_checks

    kube = _kube(kubeconfig, context, namespace)
    checks = run_checks(kube, kube.namespace, target, agent_python)
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
