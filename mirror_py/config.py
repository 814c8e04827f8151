"""mirror-py's configuration: one pydantic model, read from a file, then overridden by flags and variables.

Where the settings come from, lowest precedence first:

1. the defaults in the model below;
2. one file: ``--config FILE`` / ``MIRROR_PY_CONFIG`` (TOML, or JSON by its ``.json`` suffix), else the
   ``[tool.mirror-py]`` table of the nearest ``pyproject.toml`` or the nearest ``mirror-py.toml``, looking in
   the current directory and then each parent (in one directory, ``pyproject.toml`` is looked at first);
3. command-line flags and their ``MIRROR_PY_*`` variables (click resolves flag versus variable, and hands
   the result to :func:`load_config` as dotted-key overrides).

Every section forbids unknown keys, so a typo is an error rather than a setting silently ignored, and every
error becomes a :class:`ConfigError` that names the key, the value, what is allowed and where the value came
from: users should never have to read a pydantic traceback. :attr:`Config.sources` remembers the origin of
each setting for ``mirror-py config check``.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
import types
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from mirror_py import env_families
from mirror_py.shim.rules import AddressRule, NameFilter, RuleError, TrafficFilter
from mirror_py_agent.budget import DEFAULT_BUDGET, MAX_BUDGET, MIN_BUDGET
from mirror_py_agent.budget import describe as describe_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "FLAG_KEYS",
    "FLAG_VARIABLES",
    "NEVER_FROM_TARGET",
    "NEVER_FROM_TARGET_PREFIXES",
    "AgentConfig",
    "Config",
    "ConfigError",
    "DnsConfig",
    "EnvConfig",
    "FilterConfig",
    "FsConfig",
    "HttpFilterConfig",
    "IncomingConfig",
    "NetworkConfig",
    "OutgoingConfig",
    "TargetConfig",
    "flag_source",
    "is_never_from_target",
    "json_schema",
    "load_config",
    "merge_environment",
    "parse_env_file",
    "read_env_file",
    "shim_settings",
    "target_variables",
]

PYPROJECT = "pyproject.toml"
CONFIG_FILENAME = "mirror-py.toml"
TOOL_TABLE = "mirror-py"


class ConfigError(Exception):
    """A configuration problem, worded for the person who wrote the configuration.

    ``str()`` is one line per problem; :attr:`problems` holds the same lines for callers that list them.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems if problems is not None else [message]


# ----------------------------------------------------------------------------------------------------
# The model


def _check_rule(text: str) -> str:
    AddressRule.parse(text)  # raises RuleError, a ValueError, which pydantic reports at the list index
    return text


_Rule = Annotated[str, AfterValidator(_check_rule)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class TargetConfig(_Section):
    """What to run in the context of."""

    path: str | None = Field(
        None,
        min_length=1,
        description='The target: "pid/4242", "netns/NAME", "docker/NAME", "podman/NAME", '
        '"deploy/NAME", "pod/NAME", "pod/NAME/container/NAME".',
    )
    namespace: str | None = Field(None, min_length=1, description="Kubernetes namespace of the target.")
    kubeconfig: str | None = Field(
        None, min_length=1, description="Kubeconfig file(s), ':'-separated; default KUBECONFIG, then ~/.kube/config."
    )
    context: str | None = Field(None, min_length=1, description="Kubeconfig context; default the current one.")
    request_timeout: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds a Kubernetes API request may take to connect and to answer (as kubectl's "
        "--request-timeout); during a session's start no request waits longer than agent.startup_timeout.",
    )


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}


def _parse_size(value: Any) -> Any:
    """A byte size as people write it: ``33554432``, ``"64MiB"``, ``"64 MiB"`` (K, M and G are binary too; decimal
    kB/MB/GB are refused rather than guessed)."""
    size = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str):
        import re

        m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", value)
        if m is not None and m.group(2).lower() in _SIZE_UNITS:
            size = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if size is None:
        raise ValueError("not a size: give bytes or a number with KiB, MiB or GiB, such as '64MiB'")
    if not MIN_BUDGET <= size <= MAX_BUDGET:
        raise ValueError(f"must be between {describe_size(MIN_BUDGET)} and {describe_size(MAX_BUDGET)}")
    return size


_ByteSize = Annotated[
    int,
    BeforeValidator(_parse_size),
    WithJsonSchema({"anyOf": [{"type": "integer"},
                              {"type": "string", "pattern": r"^\s*\d+\s*([KkMmGg]([Ii][Bb])?|[Bb])?\s*$"}]}),
]


_QUANTITY = r"^(|[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?)$"


def _check_quantity(value: str) -> str:
    if not re.match(_QUANTITY, value):
        raise ValueError("not a Kubernetes quantity: give e.g. '500m' or '1' (CPU), '64Mi' or '1Gi' (memory), or "
                         "'' to leave it out")
    return value


_Quantity = Annotated[str, AfterValidator(_check_quantity), WithJsonSchema({"type": "string", "pattern": _QUANTITY})]
_SUFFIX = {"": 1, "m": 0.001, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
           "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}


def quantity_bytes(text: str) -> float:
    """A Kubernetes quantity (``256Mi``, ``1G``, ``500m``) as a number."""
    m = re.match(r"^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$", text)
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


class AgentConfig(_Section):
    """How the agent is started in the target."""

    python: str = Field("python3", min_length=1, description="The Python interpreter command in the target.")
    mode: Literal["auto", "exec", "ephemeral", "job"] = Field(
        "auto",
        description="Where the agent runs on Kubernetes: exec (in the target container), ephemeral (an ephemeral "
        "container in the target pod), job (a privileged pod on the target's node), auto (exec, or ephemeral when "
        "the target has no python3).",
    )
    image: str = Field(
        "python:3.12-slim", min_length=1, description="Image of the ephemeral, job and targetless agent containers."
    )
    namespace: str | None = Field(
        None,
        min_length=1,
        description="Namespace of the targetless agent pod (a session without a target); default the session's "
        "namespace. A dedicated namespace lets an admin grant pod create, delete and exec there only. Short DNS "
        "names resolve in the pod's namespace: name others as NAME.NAMESPACE.",
    )
    startup_timeout: float = Field(
        30.0, gt=0, allow_inf_nan=False, description="Seconds to wait for the agent to say hello."
    )
    keepalive_interval: float = Field(
        20.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="Seconds between the session's keep-alive pings to the agent. They are data on the exec stream, "
        "so they keep the cluster's streaming idle timeout (4 h; 5 min on hardened clusters) and idle-cutting load "
        "balancers in front of the API server from ending a quiet session; lower it below such a timeout.",
    )
    memory_budget: _ByteSize = Field(
        DEFAULT_BUDGET,
        description="Bytes the agent may hold for data it cannot pass on yet (bytes or e.g. '64MiB', at least "
        "4 MiB). In exec mode its memory is the target container's: past the budget it drops UDP datagrams and "
        "cuts mirrored copies and captured flows (counted, and reported once), and TCP streams wait.",
    )
    cpu_request: _Quantity = Field(
        "50m", description="CPU the job and targetless agent pods request (a Kubernetes quantity such as '50m'; "
        "empty: not declared)."
    )
    memory_request: _Quantity = Field(
        "64Mi", description="Memory the job and targetless agent pods request (a Kubernetes quantity such as "
        "'64Mi'; empty: not declared)."
    )
    cpu_limit: _Quantity = Field(
        "1", description="CPU limit of the job and targetless agent pods (empty: none; a ResourceQuota on "
        "limits.cpu then refuses them)."
    )
    memory_limit: _Quantity | None = Field(
        None, description="Memory limit of the job and targetless agent pods (empty: none); by default "
        "memory_budget plus 224 MiB (256Mi for the default budget), room for the agent's own 25 to 30 MiB."
    )

    @model_validator(mode="after")
    def _limit_holds_budget(self) -> AgentConfig:
        limit = quantity_bytes(self.memory_limit) if self.memory_limit else None
        if limit is not None and limit < self.memory_budget + (32 << 20):
            raise ValueError(f"agent.memory_limit {self.memory_limit!r} leaves no room for agent.memory_budget "
                             f"({describe_size(self.memory_budget)}) plus the agent's own 32 MiB: raise the limit "
                             "or lower the budget")
        return self

    def pod_memory_limit(self) -> str:
        """``memory_limit``, or when unset one that follows ``memory_budget`` (a larger budget must not get the
        agent OOM-killed at a limit chosen for the default one)."""
        if self.memory_limit is not None:
            return self.memory_limit
        return f"{(self.memory_budget + (224 << 20) + (1 << 20) - 1) >> 20}Mi"



class FilterConfig(_Section):
    """Either ``local`` (these stay local, the rest is remote) or ``remote`` (only these are remote)."""

    local: list[_Rule] | None = Field(None, description="Rules for what stays local; everything else is remote.")
    remote: list[_Rule] | None = Field(None, description="Rules for what is remote; everything else is local.")

    @model_validator(mode="after")
    def _one_list(self) -> FilterConfig:
        if self.local is not None and self.remote is not None:
            raise ValueError("set either 'local' or 'remote', not both")
        return self


class OutgoingConfig(_Section):
    """Outgoing connections and datagrams of the app."""

    enabled: bool = Field(True, description="Send outgoing traffic through the target.")
    tcp: bool = Field(True, description="Send outgoing TCP through the target.")
    udp: bool = Field(True, description="Send outgoing UDP through the target.")
    filter: FilterConfig | None = Field(None, description="Which destinations are local or remote.")
    local_listeners: Literal["session", "laptop", "none"] = Field(
        "session",
        description='Which laptop listeners keep a connect to a loopback address local when no filter rule '
        'matches: "session" (a socket of this process, its descendants or another process of this session '
        'listens on that address and port), "laptop" (any laptop listener on it), "none" (loopback goes to the '
        'target, whatever listens here).',
    )


class DnsConfig(_Section):
    """Name resolution of the app."""

    enabled: bool = Field(True, description="Resolve names with the target's resolver.")
    filter: FilterConfig | None = Field(None, description="Which names are resolved locally or remotely.")
    cache: bool = Field(True, description="Keep the target's answers in the session for every process of it "
                                          "(emptied when the target's /etc/hosts or resolv.conf changes).")
    cache_ttl: float = Field(5.0, ge=0, le=86400, allow_inf_nan=False,
                             description="Seconds a found name is kept (0: not kept).")
    cache_negative_ttl: float = Field(1.0, ge=0, le=86400, allow_inf_nan=False,
                                      description="Seconds an unknown name is kept (0: not kept).")


def _check_regex(text: str) -> str:
    import re

    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return text


_Regex = Annotated[str, AfterValidator(_check_regex)]


def _check_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError("a port must be 1..65535")
    return value


_Port = Annotated[int, AfterValidator(_check_port)]


def _check_mapping(pairs: list[Any]) -> list[list[int]]:
    seen: set[int] = set()
    for pair in pairs:
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(p, int) and not isinstance(p, bool) for p in pair)):
            raise ValueError(f"each entry must be [local, remote], two ports, not {_show(pair)}")
        for port in pair:
            _check_port(port)
        if pair[0] in seen:
            raise ValueError(f"local port {pair[0]} is mapped twice")
        seen.add(pair[0])
    return pairs


class HttpFilterConfig(_Section):
    """One HTTP request filter: every key given must match. The regexes are searched case-insensitively."""

    header: _Regex | None = Field(
        None, description='Regex searched in each "Name: value" header line of the request, e.g. "^x-user: me$".'
    )
    path: _Regex | None = Field(None, description="Regex searched in the request path (without the query).")
    method: _Regex | None = Field(None, description='Regex searched in the request method, e.g. "^(GET|HEAD)$".')
    all_of: list[HttpFilterConfig] | None = Field(None, description="Filters that must all match.")
    any_of: list[HttpFilterConfig] | None = Field(None, description="Filters of which one must match.")

    @model_validator(mode="after")
    def _something_to_match(self) -> HttpFilterConfig:
        if all(getattr(self, key) is None for key in ("header", "path", "method", "all_of", "any_of")):
            raise ValueError("a filter needs at least one of header, path, method, all_of or any_of")
        for key in ("all_of", "any_of"):
            if getattr(self, key) == []:
                raise ValueError(f"{key} must not be an empty list")
        return self

    def to_json(self) -> dict:
        """The filter as the agent takes it."""
        out: dict = {key: getattr(self, key) for key in ("header", "path", "method") if getattr(self, key)}
        for key in ("all_of", "any_of"):
            subs = getattr(self, key)
            if subs is not None:
                out[key] = [sub.to_json() for sub in subs]
        return out


class IncomingHttpFilterConfig(HttpFilterConfig):
    """The HTTP filter of stolen ports, optionally limited to some of them."""

    ports: list[_Port] | None = Field(
        None, description="The target's ports the filter applies to; other stolen ports are stolen whole. "
        "Default: every stolen port."
    )


class IncomingConfig(_Section):
    """Traffic that reaches the target on the ports the app listens on."""

    mode: Literal["mirror", "steal", "off"] = Field(
        "mirror",
        description='"mirror": the target keeps serving, the app gets a copy of each connection; "steal": the '
        'connections (or the requests the http_filter matches) go to the app instead; "off": listening stays local.',
    )
    port_mapping: Annotated[list[Any], AfterValidator(_check_mapping)] = Field(
        default_factory=list,
        description="[[local, remote], ...]: the app listening on the local port gets the target's remote port.",
        json_schema_extra={"items": {"type": "array", "minItems": 2, "maxItems": 2,
                                     "items": {"type": "integer", "minimum": 1, "maximum": 65535}}},
    )
    ignore_ports: list[_Port] = Field(
        default_factory=list, description="Local ports whose listeners stay purely local."
    )
    http_filter: IncomingHttpFilterConfig | None = Field(
        None, description="steal: only matching HTTP requests go to the app, the others to the target's own app."
    )
    steal_timeout: float = Field(
        30.0, gt=0, allow_inf_nan=False,
        description="steal: seconds the app may take to accept and start answering a stolen connection (or a "
        "filtered request); after that it goes to the target's own app, if the client has received nothing yet.",
    )
    header_timeout: float = Field(
        20.0, gt=0, allow_inf_nan=False,
        description="steal with http_filter: seconds a client may take to send a request head once it has begun; "
        "a slower client's connection goes to the target's own app.",
    )


class NetworkConfig(_Section):
    outgoing: OutgoingConfig = Field(default_factory=OutgoingConfig)
    dns: DnsConfig = Field(default_factory=DnsConfig)
    incoming: IncomingConfig = Field(default_factory=IncomingConfig)


class FsConfig(_Section):
    """The app's file operations: which paths are read (and written) in the target.

    The lists are Python regular expressions searched in the absolute path (anchor them with ``^`` and
    ``$``); ``mapping`` rewrites a path before any rule is asked.
    """

    mode: Literal["local", "read", "write"] = Field(
        "read",
        description='"read": paths outside the local defaults are read from the target, writes stay local; '
        '"write": writes go to the target too; "local": files are never interposed.',
    )
    read_write: list[_Regex] = Field(
        default_factory=list, description="Regexes of paths read and written in the target, whatever the mode."
    )
    read_only: list[_Regex] = Field(
        default_factory=list, description="Regexes of paths read from the target; writing them stays local."
    )
    local: list[_Regex] = Field(default_factory=list, description="Regexes of paths that always stay local.")
    not_found: list[_Regex] = Field(
        default_factory=list, description="Regexes of paths that do not exist for the app (FileNotFoundError)."
    )
    mapping: dict[_Regex, str] = Field(
        default_factory=dict,
        description="Regex = replacement (re.sub syntax, \\1 for groups): rewrites a path before the rules "
        "and the target see it; the first matching regex wins.",
    )
    metadata_cache: float = Field(
        1.0, ge=0, le=60, allow_inf_nan=False,
        description="Seconds a remote path's stat (and a listed entry's) is kept in the session, 0 to 60 "
        "(0: not kept); any change made through mirror-py empties it.",
    )


class EnvConfig(_Section):
    """The app's environment variables."""

    enabled: bool = Field(True, description="Take environment variables from the target.")
    include: list[str] | None = Field(
        None, description="fnmatch patterns: only matching names are taken from the target. Naming a variable "
        "that is kept on the laptop by default (shell start-up, git, credentials, TLS...) takes it too."
    )
    exclude: list[str] = Field(
        default_factory=list, description="fnmatch patterns: matching names are never taken from the target."
    )
    override: dict[str, str] = Field(
        default_factory=dict, description="Variables set in the app whatever the target says."
    )
    env_file: str | None = Field(
        None,
        min_length=1,
        description="A dotenv file (KEY=VALUE lines); its values act like override, and override wins. "
        "A relative path is relative to the configuration file.",
    )


class InterposeConfig(_Section):
    """Which code in the app's process is interposed besides the Python-level surface."""

    c_extensions: bool = Field(
        True,
        description="Route the connects, name lookups, bind and listen of C extensions (libpq, libuv, grpc's "
        "core, libcurl) through the target, and their file opens (libsqlite3, OpenSSL's cafile) through the fs "
        "rules, by patching their GOT slots. Linux x86_64 and aarch64 only; "
        "MIRROR_PY_INTERPOSE_C_EXTENSIONS=0/1 overrides it for one process.",
    )


class Config(_Section):
    """The whole configuration. Build it with :func:`load_config` so that :attr:`sources` is filled in."""

    target: TargetConfig = Field(default_factory=TargetConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    fs: FsConfig = Field(default_factory=FsConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    interpose: InterposeConfig = Field(default_factory=InterposeConfig)

    _sources: dict[str, str] = PrivateAttr(default_factory=dict)
    _config_file: str | None = PrivateAttr(None)

    @property
    def sources(self) -> dict[str, str]:
        """Dotted key of every setting → where its value came from: a file, flag, variable or "default"."""
        return self._sources

    @property
    def config_file(self) -> str | None:
        """The configuration file that was read (a ``pyproject.toml`` path for its table), if any."""
        return self._config_file


# ----------------------------------------------------------------------------------------------------
# Flags and variables

#: click parameter name → environment variable; the CLI gives these to click as ``envvar``.
FLAG_VARIABLES: dict[str, str] = {
    "config": "MIRROR_PY_CONFIG",
    "target": "MIRROR_PY_TARGET",
    "namespace": "MIRROR_PY_NAMESPACE",
    "kubeconfig": "MIRROR_PY_KUBECONFIG",
    "context": "MIRROR_PY_CONTEXT",
    "request_timeout": "MIRROR_PY_REQUEST_TIMEOUT",
    "agent_python": "MIRROR_PY_AGENT_PYTHON",
    "agent_mode": "MIRROR_PY_AGENT_MODE",
    "fs_mode": "MIRROR_PY_FS_MODE",
    "agent_image": "MIRROR_PY_AGENT_IMAGE",
    "agent_namespace": "MIRROR_PY_AGENT_NAMESPACE",
    "agent_startup_timeout": "MIRROR_PY_AGENT_STARTUP_TIMEOUT",
    "outgoing": "MIRROR_PY_OUTGOING",
    "dns": "MIRROR_PY_DNS",
    "env": "MIRROR_PY_ENV",
    "env_file": "MIRROR_PY_ENV_FILE",
    "incoming": "MIRROR_PY_INCOMING",
}

#: click parameter name → the dotted key it overrides (``config`` names the file instead, so it is absent).
FLAG_KEYS: dict[str, str] = {
    "target": "target.path",
    "namespace": "target.namespace",
    "kubeconfig": "target.kubeconfig",
    "context": "target.context",
    "request_timeout": "target.request_timeout",
    "agent_python": "agent.python",
    "agent_mode": "agent.mode",
    "fs_mode": "fs.mode",
    "agent_image": "agent.image",
    "agent_namespace": "agent.namespace",
    "agent_startup_timeout": "agent.startup_timeout",
    "outgoing": "network.outgoing.enabled",
    "dns": "network.dns.enabled",
    "env": "env.enabled",
    "env_file": "env.env_file",
    "incoming": "network.incoming.mode",
}

_KEY_FLAGS = {key: flag for flag, key in FLAG_KEYS.items()}


def flag_source(flag: str, from_environment: bool = False) -> str:
    """How :attr:`Config.sources` describes a value given by ``flag`` or by its variable.

    The CLI knows which of the two it was (click's ``get_parameter_source``) and passes the result to
    :func:`load_config` as ``override_sources``, so ``config check`` can point at the right place.
    """
    if from_environment and flag in FLAG_VARIABLES:
        return f"environment variable {FLAG_VARIABLES[flag]}"
    return f"flag --{flag.replace('_', '-')}"


# ----------------------------------------------------------------------------------------------------
# Loading


def load_config(
    config_file: str | os.PathLike | None = None,
    overrides: Mapping[str, object] | None = None,
    cwd: str | os.PathLike | None = None,
    *,
    override_sources: Mapping[str, str] | None = None,
) -> Config:
    """Read the configuration file (given or discovered from ``cwd``), apply ``overrides``, validate.

    ``overrides`` maps dotted keys (``"target.path"``, ``"agent.python"``) to values; ``None`` values are
    skipped, so the CLI can pass every flag whether the user set it or not. ``override_sources`` says where
    each override came from (see :func:`flag_source`); by default the matching flag is named.
    Raises :class:`ConfigError` for anything wrong, never another exception.
    """
    try:
        base = Path(cwd) if cwd is not None else Path.cwd()
    except (OSError, TypeError) as exc:
        raise ConfigError(f"cannot tell where to look for a configuration file: {exc}")
    data: dict[str, Any] = {}
    file_label: str | None = None
    file_path: Path | None = None
    if config_file is not None:
        try:
            path = base / os.fspath(config_file)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config file {config_file!r}: {exc}")
        file_path, data, file_label = _read_given_file(path)
    else:
        found = _discover(base)
        if found is not None:
            file_path, data, file_label = found

    sources: dict[str, str] = {}
    if file_label is not None:
        _record_file_sources(data, (), Config, file_label, sources)

    for key, value in (overrides or {}).items():
        if value is None:
            continue
        label = (override_sources or {}).get(key) or _default_override_source(key)
        parts = _split_key(key, label)
        _set_override(data, parts, _plain(value))
        prefix = ".".join(parts)
        for recorded in [k for k in sources if k == prefix or k.startswith(prefix + ".")]:
            del sources[recorded]
        # A filter holds one list: a flag that sets one replaces the file's list of the other kind.
        if len(parts) >= 2 and parts[-2] == "filter" and parts[-1] in ("local", "remote"):
            other = "remote" if parts[-1] == "local" else "local"
            parent = _get(data, parts[:-1])
            if isinstance(parent, dict):
                parent.pop(other, None)
            sources.pop(".".join((*parts[:-1], other)), None)
        sources[prefix] = label

    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise _translate(exc, sources, file_label) from None

    config._config_file = str(file_path) if file_path is not None else None
    config._sources = _leaf_sources(sources)
    _resolve_env_file(config, file_path, file_label, base)
    return config


def _read_given_file(path: Path) -> tuple[Path, dict[str, Any], str]:
    try:
        exists = path.exists()
        is_dir = exists and path.is_dir()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"config file {path}: cannot be read: {exc}")
    if not exists:
        raise ConfigError(f"config file not found: {path}")
    if is_dir:
        raise ConfigError(f"config file {path} is a directory")
    if path.suffix.lower() == ".json":
        data = _load_json(path)
        data.pop("$schema", None)  # editors use it to find the published JSON Schema
        return path, data, str(path)
    data = _load_toml(path)
    if path.name == PYPROJECT:
        table = _tool_table(data, path)
        if table is None:
            raise ConfigError(f"{path} has no [tool.{TOOL_TABLE}] table")
        return path, table, f"{path} [tool.{TOOL_TABLE}]"
    return path, data, str(path)


def _discover(start: Path) -> tuple[Path, dict[str, Any], str] | None:
    """The nearest ``pyproject.toml`` with a ``[tool.mirror-py]`` table or ``mirror-py.toml``, walking up."""
    try:
        directory = start.resolve()
    except (OSError, RuntimeError):
        directory = start.absolute()
    for folder in (directory, *directory.parents):
        pyproject = folder / PYPROJECT
        if _is_file(pyproject):
            try:
                text = pyproject.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                text = ""
            # Cheap pre-check: an unrelated or broken pyproject.toml without our table is not our business.
            if TOOL_TABLE in text:
                table = _tool_table(_load_toml(pyproject), pyproject)
                if table is not None:
                    return pyproject, table, f"{pyproject} [tool.{TOOL_TABLE}]"
        candidate = folder / CONFIG_FILENAME
        if _is_file(candidate):
            return candidate, _load_toml(candidate), str(candidate)
    return None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def _tool_table(data: dict[str, Any], path: Path) -> dict[str, Any] | None:
    tool = data.get("tool")
    if not isinstance(tool, dict) or TOOL_TABLE not in tool:
        return None
    table = tool[TOOL_TABLE]
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tool.{TOOL_TABLE}] must be a table, got {_show(table)}")
    return table


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: cannot be read: {exc}")


def _load_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: cannot be read: {exc}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}, line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}")
    except RecursionError:
        raise ConfigError(f"{path}: invalid JSON: nested too deeply")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object, got {_show(data)}")
    return data


def _default_override_source(key: str) -> str:
    flag = _KEY_FLAGS.get(key)
    if flag is None:
        return f"override {key}"
    return f"{flag_source(flag)} or {FLAG_VARIABLES[flag]}"


def _split_key(key: object, label: str) -> tuple[str, ...]:
    if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{label}: {key!r} is not a dotted configuration key like 'agent.python'")
    return tuple(key.split("."))


def _plain(value: object) -> object:
    """Copy containers, so the override never aliases (and later mutates) the caller's objects."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _get(data: Any, parts: tuple[str, ...]) -> Any:
    for part in parts:
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _set_override(data: dict[str, Any], parts: tuple[str, ...], value: object) -> None:
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


_UNION_TYPES = (Union, getattr(types, "UnionType", Union))


def _submodel(model: type[BaseModel] | None, name: str) -> type[BaseModel] | None:
    """The section class of field ``name`` of ``model``, or None when it is a plain value (a leaf)."""
    if model is None or name not in model.model_fields:
        return None
    annotation = model.model_fields[name].annotation
    candidates = get_args(annotation) if get_origin(annotation) in _UNION_TYPES else (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _list_item_model(model: type[BaseModel] | None, name: str) -> type[BaseModel] | None:
    """The section class of the items of a list-of-tables field (``http_filter.any_of``), for error messages."""
    if model is None or name not in model.model_fields:
        return None
    annotation = model.model_fields[name].annotation
    for candidate in get_args(annotation) if get_origin(annotation) in _UNION_TYPES else (annotation,):
        if get_origin(candidate) is list:
            (item,) = get_args(candidate) or (None,)
            if isinstance(item, type) and issubclass(item, BaseModel):
                return item
    return None


def _record_file_sources(
    data: Any, prefix: tuple[str, ...], model: type[BaseModel] | None, label: str, out: dict[str, str]
) -> None:
    """Record ``label`` for every key the file sets, down to the settings (a table value is one setting)."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        path = (*prefix, str(key))
        sub = _submodel(model, str(key))
        if sub is not None and isinstance(value, dict):
            _record_file_sources(value, path, sub, label, out)
        else:
            out[".".join(path)] = label


def _leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name in model.model_fields:
        key = f"{prefix}{name}"
        sub = _submodel(model, name)
        if sub is not None:
            keys.extend(_leaf_keys(sub, key + "."))
        else:
            keys.append(key)
    return keys


def _leaf_sources(recorded: dict[str, str]) -> dict[str, str]:
    out = {}
    for key in _leaf_keys(Config):
        out[key] = _lookup_source(key, recorded) or "default"
    return out


def _lookup_source(key: str, recorded: Mapping[str, str]) -> str | None:
    """The source of ``key`` itself or of the nearest enclosing key that was set as a whole."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        found = recorded.get(".".join(parts[:end]))
        if found is not None:
            return found
    return None


def _resolve_env_file(config: Config, file_path: Path | None, file_label: str | None, base: Path) -> None:
    """Make ``env.env_file`` absolute (relative to the file that named it) and check it reads cleanly now,
    so that ``config check`` and start-up fail early rather than after the agent is up."""
    env_file = config.env.env_file
    if env_file is None:
        return
    source = config.sources.get("env.env_file", "")
    anchor = file_path.parent if file_path is not None and source == file_label else base
    try:
        resolved = anchor / Path(env_file).expanduser()
        config.env.env_file = str(resolved)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"env.env_file = {_show(env_file)} (from {source}): {exc}")
    try:
        read_env_file(resolved)
    except ConfigError as exc:
        raise ConfigError(f"env.env_file = {_show(env_file)} (from {source}): {exc}")


# ----------------------------------------------------------------------------------------------------
# Turning pydantic errors into sentences

_MAX_PROBLEMS = 10

_EXPECTED = {
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "string_type": "expected a string",
    "list_type": "expected a list of strings",
    "dict_type": "expected a table",
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
}


def _show(value: object, limit: int = 80) -> str:
    """A value the way the user wrote it in TOML or JSON (``true``, ``"x"``), cut to a readable length."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part and all(c.isalnum() or c in "_-" for c in part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


def _source_for(loc: tuple[int | str, ...], sources: Mapping[str, str], file_label: str | None) -> str:
    parts = [str(p) for p in loc if not isinstance(p, int)]
    key = ".".join(parts)
    found = _lookup_source(key, sources) if key else None
    if found is not None:
        return found
    below = sorted({v for k, v in sources.items() if not key or k.startswith(key + ".")})
    if below:
        return " and ".join(below)
    return file_label or "defaults"


def _allowed_keys(loc: tuple[int | str, ...]) -> tuple[str, list[str]]:
    model: type[BaseModel] | None = Config
    section = []
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        model = _submodel(model, str(part)) or _list_item_model(model, str(part))
        section.append(str(part))
        if model is None:
            return ".".join(section), []
    return ".".join(section), list(model.model_fields) if model is not None else []


def _describe(error: Mapping[str, Any], sources: Mapping[str, str], file_label: str | None) -> str:
    loc = tuple(error.get("loc", ()))
    if loc and loc[-1] == "[key]":  # a table's key failed (fs.mapping's regexes): name the table entry
        loc = loc[:-1]
    key = _dotted(loc) or "(top level)"
    source = _source_for(loc, sources, file_label)
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        section, allowed = _allowed_keys(loc)
        where = f"in [{section}]" if section else "at the top level"
        text = f"unknown key {key} (from {source}); allowed {where}: {', '.join(allowed)}"
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1) if loc else []
        if close:
            text += f"; did you mean {close[0]!r}?"
        return text
    value = _show(error.get("input"))
    ctx = error.get("ctx") or {}
    if kind == "greater_than":
        bound = ctx.get("gt")
        expected = f"must be greater than {bound:g}" if isinstance(bound, float) else f"must be greater than {bound}"
    elif kind == "literal_error":
        expected = f"expected one of {ctx.get('expected', '')}".replace("'", '"')
    elif kind == "string_too_short":
        expected = "must not be empty"
    elif kind == "value_error":
        cause = ctx.get("error")
        # A rule's own message repeats the rule text, which is already shown as the value.
        expected = cause.reason if isinstance(cause, RuleError) else str(cause or error.get("msg", ""))
    else:
        expected = _EXPECTED.get(kind) or str(error.get("msg", "invalid value"))
    return f"invalid value for {key}: {value} (from {source}): {expected}"


def _translate(exc: ValidationError, sources: Mapping[str, str], file_label: str | None) -> ConfigError:
    problems = [_describe(e, sources, file_label) for e in exc.errors()]
    if len(problems) > _MAX_PROBLEMS:
        problems = [*problems[:_MAX_PROBLEMS], f"... and {len(problems) - _MAX_PROBLEMS} more"]
    if len(problems) == 1:
        return ConfigError(problems[0], problems)
    return ConfigError(
        f"{len(exc.errors())} configuration problems:\n" + "\n".join(f"  {p}" for p in problems), problems
    )


# ----------------------------------------------------------------------------------------------------
# Environment

#: Never taken from the target: they describe the laptop's interpreter, shell and session, and the app
#: would not start, or would start another Python, with the container's values. HOSTNAME is not here:
#: in a pod it is the pod name, which is what the app should see (gethostname() answers the same).
NEVER_FROM_TARGET: tuple[str, ...] = (
    "PATH",
    "HOME",
    "PWD",
    "OLDPWD",
    "SHLVL",
    "_",
    "USER",
    "LOGNAME",
    "SHELL",
    "TERM",
    "TMPDIR",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONSAFEPATH",
    "PYTHONNOUSERSITE",
    "PYTHONEXECUTABLE",
    "PYTHONUSERBASE",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
)

#: Whole families: mirror-py's own session variables, every interpreter setting, the dynamic loader,
#: and the laptop's virtualenv/conda activation.
NEVER_FROM_TARGET_PREFIXES: tuple[str, ...] = ("MIRROR_PY_", "PYTHON", "LD_", "VIRTUAL_ENV", "CONDA_")

_NEVER = frozenset(NEVER_FROM_TARGET)


def is_never_from_target(name: str) -> bool:
    """True for variables the target must not set, whatever ``include`` says (``override`` still can)."""
    return name in _NEVER or name.startswith(NEVER_FROM_TARGET_PREFIXES)


def target_variables(remote_env: Mapping[str, str], cfg: EnvConfig) -> tuple[dict[str, str], list[str]]:
    """The target's variables the app takes, and the names kept on the laptop because they belong to a
    family that would let the target run code here (:mod:`mirror_py.env_families`) and ``include`` does not
    name them. Never-from-target names are dropped silently: nobody could want those."""
    taken: dict[str, str] = {}
    kept: list[str] = []
    if not cfg.enabled:
        return taken, kept
    include = cfg.include
    for name, value in remote_env.items():
        if is_never_from_target(name):
            continue
        if include is not None and not any(fnmatchcase(name, p) for p in include):
            continue
        if any(fnmatchcase(name, p) for p in cfg.exclude):
            continue
        if env_families.family_of(name) is not None and not env_families.named_by(name, include or ()):
            kept.append(name)
            continue
        taken[name] = value
    return taken, sorted(kept)


def merge_environment(local_env: Mapping[str, str], remote_env: Mapping[str, str], cfg: EnvConfig) -> dict[str, str]:
    """The app's environment: local, then the target's (filtered), then ``env_file``, then ``override``.

    Local variables the target does not set survive, so the laptop's interpreter keeps working; the
    target's values win otherwise because the point is to behave as in the pod. With ``enabled = false``
    only the user's own ``env_file`` and ``override`` are applied.
    """
    merged = dict(local_env)
    merged.update(target_variables(remote_env, cfg)[0])
    if cfg.env_file is not None:
        merged.update(read_env_file(cfg.env_file))
    merged.update(cfg.override)
    return merged


def read_env_file(path: str | os.PathLike) -> dict[str, str]:
    """Read a dotenv file; a missing file or a bad line is a :class:`ConfigError` naming file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"env file not found: {os.fspath(path)}")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"env file {os.fspath(path)}: cannot be read: {exc}")
    return parse_env_file(text, os.fspath(path))


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "$": "$"}


def parse_env_file(text: str, filename: str = "<env file>") -> dict[str, str]:
    """Parse dotenv text: ``KEY=VALUE`` lines, ``#`` comments, an optional ``export`` prefix, and values
    that are bare (an inline comment needs a space before ``#``), ``'literal'`` or ``"with \\n escapes"``;
    quoted values may span lines. Nothing is expanded: ``$VAR`` stays as written.
    """
    values: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        lineno = i + 1
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[len("export") :].lstrip()
        name, eq, rest = line.partition("=")
        name = name.strip()
        if not eq:
            raise ConfigError(f"{filename}, line {lineno}: expected KEY=VALUE, got {_show(lines[i - 1].strip())}")
        if (
            not name
            or not (name[0].isalpha() or name[0] == "_")
            or not all(c.isascii() and (c.isalnum() or c in "_.-") for c in name)
        ):
            raise ConfigError(f"{filename}, line {lineno}: {_show(name)} is not a valid variable name")
        rest = rest.lstrip()
        if rest[:1] in ("'", '"'):
            quote = rest[0]
            body = rest[1:]
            chunks: list[str] = []
            while True:
                end = _closing_quote(body, quote)
                if end >= 0:
                    chunks.append(body[:end])
                    trailer = body[end + 1 :].strip()
                    break
                chunks.append(body)
                if i >= len(lines):
                    raise ConfigError(f"{filename}, line {lineno}: unterminated {quote} quote")
                body = "\n" + lines[i]
                i += 1
            if trailer and not trailer.startswith("#"):
                raise ConfigError(f"{filename}, line {lineno}: unexpected {_show(trailer)} after the quoted value")
            raw = "".join(chunks)
            value = _unescape(raw) if quote == '"' else raw
        else:
            value = rest
            for sep in (" #", "\t#"):
                cut = value.find(sep)
                if cut >= 0:
                    value = value[:cut]
            value = value.strip()
        values[name] = value
    return values


def _closing_quote(body: str, quote: str) -> int:
    j = 0
    while j < len(body):
        c = body[j]
        if c == "\\" and quote == '"':
            j += 2
            continue
        if c == quote:
            return j
        j += 1
    return -1


def _unescape(raw: str) -> str:
    out = []
    j = 0
    while j < len(raw):
        c = raw[j]
        if c == "\\" and j + 1 < len(raw) and raw[j + 1] in _ESCAPES:
            out.append(_ESCAPES[raw[j + 1]])
            j += 2
            continue
        out.append(c)
        j += 1
    return "".join(out)


# ----------------------------------------------------------------------------------------------------
# For the shim and for editors


def shim_settings(cfg: Config) -> dict:
    """The JSON-able part of the configuration the shim reads at interpreter start-up.

    Only what the shim decides with travels, so the app's interpreter never imports pydantic; filters are
    sent as rule texts and parsed again there (a few microseconds).
    """
    out_filter = cfg.network.outgoing.filter
    dns_filter = cfg.network.dns.filter
    outgoing = TrafficFilter(
        local=out_filter.local if out_filter else None, remote=out_filter.remote if out_filter else None
    )
    dns = NameFilter(local=dns_filter.local if dns_filter else None, remote=dns_filter.remote if dns_filter else None)
    return {
        "outgoing": {
            "enabled": cfg.network.outgoing.enabled,
            "tcp": cfg.network.outgoing.tcp,
            "udp": cfg.network.outgoing.udp,
            "filter": outgoing.to_json(),
            "local_listeners": cfg.network.outgoing.local_listeners,
        },
        "dns": {"enabled": cfg.network.dns.enabled, "filter": dns.to_json()},
        "incoming": {
            "mode": cfg.network.incoming.mode,
            "port_mapping": [list(pair) for pair in cfg.network.incoming.port_mapping],
            "ignore_ports": list(cfg.network.incoming.ignore_ports),
        },
        "fs": {
            "mode": cfg.fs.mode,
            "read_write": list(cfg.fs.read_write),
            "read_only": list(cfg.fs.read_only),
            "local": list(cfg.fs.local),
            "not_found": list(cfg.fs.not_found),
            "mapping": [[pattern, replacement] for pattern, replacement in cfg.fs.mapping.items()],
        },
        "interpose": {"c_extensions": cfg.interpose.c_extensions},
    }


def json_schema() -> dict:
    """The JSON Schema of the configuration, published so editors can complete and check config files."""
    schema = Config.model_json_schema()
    schema.setdefault("properties", {})["$schema"] = {
        "type": "string",
        "description": "The URL or path of this schema, for editors.",
    }
    return schema
