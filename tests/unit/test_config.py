"""Configuration loading, validation messages, sources and the environment merge (mirror_py.config)."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirror_py.config import (
    FLAG_KEYS,
    FLAG_VARIABLES,
    Config,
    ConfigError,
    EnvConfig,
    flag_source,
    is_never_from_target,
    json_schema,
    load_config,
    merge_environment,
    parse_env_file,
    read_env_file,
    shim_settings,
)
from mirror_py.shim.rules import NameFilter, TrafficFilter


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults and discovery -------------------------------------------------------------------------------


def test_defaults_without_any_file(tmp_path):
    cfg = load_config(cwd=tmp_path)
    assert cfg.config_file is None
    assert cfg.target.path is None and cfg.target.namespace is None
    assert cfg.agent.python == "python3" and cfg.agent.startup_timeout == 30.0
    assert cfg.network.outgoing.enabled and cfg.network.outgoing.tcp and cfg.network.outgoing.udp
    assert cfg.network.outgoing.filter is None
    assert cfg.network.dns.enabled and cfg.network.dns.filter is None
    assert cfg.env.enabled and cfg.env.include is None and cfg.env.exclude == [] and cfg.env.override == {}
    assert set(cfg.sources.values()) == {"default"}
    assert "agent.python" in cfg.sources and "network.outgoing.filter.local" in cfg.sources


def test_mirror_py_toml_found_walking_up(tmp_path):
    conf = write(tmp_path / "mirror-py.toml", '[target]\npath = "pid/42"\n')
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    cfg = load_config(cwd=deep)
    assert cfg.target.path == "pid/42"
    assert cfg.config_file == str(conf)
    assert cfg.sources["target.path"] == str(conf)
    assert cfg.sources["agent.python"] == "default"


def test_pyproject_table_found_walking_up(tmp_path):
    py = write(
        tmp_path / "pyproject.toml",
        '[project]\nname = "x"\n\n[tool.mirror-py.agent]\npython = "python3.12"\n',
    )
    (tmp_path / "src").mkdir()
    cfg = load_config(cwd=tmp_path / "src")
    assert cfg.agent.python == "python3.12"
    assert cfg.config_file == str(py)
    assert cfg.sources["agent.python"] == f"{py} [tool.mirror-py]"


def test_pyproject_without_table_is_skipped(tmp_path):
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n[tool.ruff]\nline-length = 99\n')
    conf = write(tmp_path / "mirror-py.toml", '[agent]\npython = "py"\n')
    cfg = load_config(cwd=tmp_path)
    assert cfg.config_file == str(conf) and cfg.agent.python == "py"


def test_broken_unrelated_pyproject_is_ignored(tmp_path):
    write(tmp_path / "pyproject.toml", "this is [not toml\n")
    assert load_config(cwd=tmp_path).config_file is None


def test_in_one_directory_pyproject_comes_first_but_the_nearest_directory_wins(tmp_path):
    write(tmp_path / "pyproject.toml", '[tool.mirror-py.agent]\npython = "from-pyproject"\n')
    write(tmp_path / "mirror-py.toml", '[agent]\npython = "from-toml"\n')
    assert load_config(cwd=tmp_path).agent.python == "from-pyproject"
    write(tmp_path / "sub" / "mirror-py.toml", '[agent]\npython = "nearer"\n')
    assert load_config(cwd=tmp_path / "sub").agent.python == "nearer"


def test_explicit_file_wins_over_discovery(tmp_path):
    write(tmp_path / "mirror-py.toml", '[agent]\npython = "discovered"\n')
    other = write(tmp_path / "conf" / "custom.toml", '[agent]\npython = "explicit"\n')
    cfg = load_config(config_file="conf/custom.toml", cwd=tmp_path)
    assert cfg.agent.python == "explicit" and cfg.config_file == str(other)


def test_explicit_pyproject_uses_its_table(tmp_path):
    py = write(tmp_path / "pyproject.toml", '[tool.mirror-py.target]\npath = "netns/n1"\n')
    assert load_config(config_file=py).target.path == "netns/n1"
    bare = write(tmp_path / "other" / "pyproject.toml", '[project]\nname = "x"\n')
    with pytest.raises(ConfigError, match=r"has no \[tool.mirror-py\] table"):
        load_config(config_file=bare)


def test_json_config(tmp_path):
    conf = write(
        tmp_path / "mp.json",
        json.dumps(
            {
                "$schema": "./schema.json",
                "target": {"path": "docker/web"},
                "network": {"outgoing": {"filter": {"local": ["127.0.0.1"]}}},
            }
        ),
    )
    cfg = load_config(config_file=conf)
    assert cfg.target.path == "docker/web"
    assert cfg.network.outgoing.filter.local == ["127.0.0.1"]
    assert cfg.sources["network.outgoing.filter.local"] == str(conf)


def test_unknown_suffix_is_read_as_toml(tmp_path):
    conf = write(tmp_path / "mirror.conf", '[agent]\npython = "p"\n')
    assert load_config(config_file=conf).agent.python == "p"


def test_missing_config_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(config_file="nope.toml", cwd=tmp_path)
    assert str(info.value) == f"config file not found: {tmp_path / 'nope.toml'}"


def test_directory_as_config_file(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(config_file=tmp_path)


def test_bad_toml_names_file_and_line(tmp_path):
    conf = write(tmp_path / "mirror-py.toml", '[agent]\npython = "ok"\nstartup_timeout = = 3\n')
    with pytest.raises(ConfigError) as info:
        load_config(cwd=tmp_path)
    message = str(info.value)
    assert str(conf) in message and "invalid TOML" in message and "line 3" in message


def test_bad_json_names_file_and_line(tmp_path):
    conf = write(tmp_path / "c.json", '{\n  "agent": {\n    "python": "x",\n  }\n}\n')
    with pytest.raises(ConfigError) as info:
        load_config(config_file=conf)
    assert str(info.value).startswith(f"{conf}, line 4, column 3: invalid JSON")


def test_json_top_level_must_be_an_object(tmp_path):
    conf = write(tmp_path / "c.json", "[1, 2]")
    with pytest.raises(ConfigError, match="top level must be a JSON object"):
        load_config(config_file=conf)


def test_tool_table_must_be_a_table(tmp_path):
    write(tmp_path / "pyproject.toml", '[tool]\nmirror-py = "yes"\n')
    with pytest.raises(ConfigError, match=r"\[tool.mirror-py\] must be a table"):
        load_config(cwd=tmp_path)


# --- overrides and sources --------------------------------------------------------------------------------


def test_overrides_win_over_the_file_and_none_is_ignored(tmp_path):
    conf = write(tmp_path / "mirror-py.toml", '[target]\npath = "pid/1"\nnamespace = "ns"\n[agent]\npython = "a"\n')
    cfg = load_config(
        cwd=tmp_path,
        overrides={"target.path": "deploy/api", "agent.python": None, "agent.startup_timeout": "12.5"},
    )
    assert cfg.target.path == "deploy/api"
    assert cfg.target.namespace == "ns"
    assert cfg.agent.python == "a"
    assert cfg.agent.startup_timeout == 12.5
    assert cfg.sources["target.path"] == "flag --target or MIRROR_PY_TARGET"
    assert cfg.sources["target.namespace"] == str(conf)
    assert cfg.sources["agent.python"] == str(conf)
    assert cfg.sources["agent.startup_timeout"] == "flag --agent-startup-timeout or MIRROR_PY_AGENT_STARTUP_TIMEOUT"


def test_override_sources_say_flag_or_variable(tmp_path):
    cfg = load_config(
        cwd=tmp_path,
        overrides={"target.path": "pod/x", "agent.python": "python3.11", "env.exclude": ["AWS_*"]},
        override_sources={
            "target.path": flag_source("target", from_environment=True),
            "agent.python": flag_source("agent_python"),
        },
    )
    assert cfg.sources["target.path"] == "environment variable MIRROR_PY_TARGET"
    assert cfg.sources["agent.python"] == "flag --agent-python"
    assert cfg.sources["env.exclude"] == "override env.exclude"
    assert cfg.env.exclude == ["AWS_*"]


def test_override_of_a_whole_section_and_of_a_filter_list(tmp_path):
    write(tmp_path / "mirror-py.toml", '[network.outgoing.filter]\nlocal = ["127.0.0.1"]\n')
    cfg = load_config(cwd=tmp_path, overrides={"network.outgoing.filter.remote": ["10.0.0.0/8"]})
    assert cfg.network.outgoing.filter.remote == ["10.0.0.0/8"]
    assert cfg.network.outgoing.filter.local is None, "a flag's list replaces the file's list of the other kind"
    cfg = load_config(cwd=tmp_path, overrides={"network.outgoing": {"udp": False}})
    assert cfg.network.outgoing.filter is None and cfg.network.outgoing.udp is False
    assert cfg.sources["network.outgoing.udp"] == "override network.outgoing"
    assert cfg.sources["network.outgoing.filter.local"] == "override network.outgoing"


def test_override_does_not_alias_the_callers_objects(tmp_path):
    rules = ["10.0.0.0/8"]
    cfg = load_config(cwd=tmp_path, overrides={"network.dns.filter": {"local": rules}})
    rules.append("oops")
    assert cfg.network.dns.filter.local == ["10.0.0.0/8"]


def test_override_path_objects_become_strings(tmp_path):
    env = write(tmp_path / "x.env", "A=1\n")
    assert load_config(cwd=tmp_path, overrides={"env.env_file": env}).env.env_file == str(env)


@pytest.mark.parametrize("key", ["", "a..b", ".x", "x."])
def test_bad_override_keys(tmp_path, key):
    with pytest.raises(ConfigError, match="not a dotted configuration key"):
        load_config(cwd=tmp_path, overrides={key: 1})


def test_unknown_override_key_names_the_flag(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(cwd=tmp_path, overrides={"agent.pyhton": "x"}, override_sources={"agent.pyhton": "flag --x"})
    assert "unknown key agent.pyhton (from flag --x)" in str(info.value)
    assert "did you mean 'python'?" in str(info.value)


def test_flag_tables_agree(tmp_path):
    assert set(FLAG_KEYS) <= set(FLAG_VARIABLES)
    assert set(FLAG_VARIABLES) - set(FLAG_KEYS) == {"config"}
    assert all(v.startswith("MIRROR_PY_") for v in FLAG_VARIABLES.values())
    leaves = set(Config().model_dump().keys())
    for key in FLAG_KEYS.values():
        assert key.split(".")[0] in leaves
        assert key in load_config(cwd=tmp_path).sources


# --- error messages ---------------------------------------------------------------------------------------


def test_unknown_key_names_the_key_the_file_and_the_choices(tmp_path):
    conf = write(tmp_path / "mirror-py.toml", "[network.outgoing]\ntpc = false\n")
    with pytest.raises(ConfigError) as info:
        load_config(cwd=tmp_path)
    assert str(info.value) == (
        f"unknown key network.outgoing.tpc (from {conf}); allowed in [network.outgoing]: "
        "enabled, tcp, udp, filter, local_listeners; did you mean 'tcp'?"
    )


def test_unknown_top_level_section(tmp_path):
    write(tmp_path / "mirror-py.toml", "[envv]\nenabled = false\n")
    with pytest.raises(ConfigError) as info:
        load_config(cwd=tmp_path)
    assert "unknown key envv" in str(info.value)
    assert "allowed at the top level: target, agent, network, fs, env" in str(info.value)
    assert "did you mean 'env'?" in str(info.value)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[network.outgoing]\nudp = "maybe"', 'invalid value for network.outgoing.udp: "maybe"'),
        ('[network.outgoing]\nudp = "maybe"', "expected true or false"),
        ("[agent]\nstartup_timeout = 0", "invalid value for agent.startup_timeout: 0"),
        ("[agent]\nstartup_timeout = 0", "must be greater than 0"),
        ("[agent]\nstartup_timeout = nan", "expected a finite number"),
        ('[agent]\nstartup_timeout = "soon"', 'startup_timeout: "soon"'),
        ('[agent]\nstartup_timeout = "soon"', "expected a number"),
        ("[agent]\npython = 3", "invalid value for agent.python: 3"),
        ("[agent]\npython = 3", "expected a string"),
        ('[agent]\npython = ""', "must not be empty"),
        ('[env]\nexclude = "AWS_*"', 'invalid value for env.exclude: "AWS_*"'),
        ('[env]\nexclude = "AWS_*"', "expected a list of strings"),
        ("[env.override]\nDEBUG = 1", "invalid value for env.override.DEBUG: 1"),
        ('[env]\noverride = {"my var" = 1}', 'env.override["my var"]'),
        ("network = 5", "invalid value for network: 5"),
        ("network = 5", "expected a table"),
        (
            '[network.outgoing.filter]\nlocal = ["10.0.0.0/8", "http://x"]',
            'invalid value for network.outgoing.filter.local[1]: "http://x"',
        ),
        ('[network.outgoing.filter]\nlocal = ["10.0.0.0/8", "http://x"]', "unknown protocol 'http'"),
        ('[network.dns.filter]\nremote = ["a b"]', "network.dns.filter.remote[0]"),
        (
            '[network.dns.filter]\nlocal = ["a"]\nremote = ["b"]',
            "invalid value for network.dns.filter:",
        ),
        ('[network.dns.filter]\nlocal = ["a"]\nremote = ["b"]', "set either 'local' or 'remote', not both"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(tmp_path, toml, expected):
    conf = write(tmp_path / "mirror-py.toml", toml + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(cwd=tmp_path)
    message = str(info.value)
    assert expected in message
    assert f"(from {conf})" in message
    assert "pydantic" not in message and "Traceback" not in message


def test_error_source_points_at_the_flag_when_a_flag_is_wrong(tmp_path):
    write(tmp_path / "mirror-py.toml", '[agent]\npython = "ok"\n')
    with pytest.raises(ConfigError) as info:
        load_config(
            cwd=tmp_path,
            overrides={"agent.startup_timeout": "-3"},
            override_sources={"agent.startup_timeout": "environment variable MIRROR_PY_AGENT_STARTUP_TIMEOUT"},
        )
    assert str(info.value) == (
        'invalid value for agent.startup_timeout: "-3" '
        "(from environment variable MIRROR_PY_AGENT_STARTUP_TIMEOUT): must be greater than 0"
    )


def test_error_mixing_file_and_flag_names_both(tmp_path):
    conf = write(tmp_path / "mirror-py.toml", '[network.dns.filter]\nlocal = ["a"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(cwd=tmp_path, overrides={"network.dns.filter": {"local": ["x"], "remote": ["b"]}})
    assert "from override network.dns.filter" in str(info.value)
    assert str(conf) not in str(info.value)


def test_several_problems_are_listed(tmp_path):
    write(tmp_path / "mirror-py.toml", '[agent]\npython = 1\nstartup_timeout = -1\n[env]\nenabled = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(cwd=tmp_path)
    assert str(info.value).startswith("3 configuration problems:\n")
    assert len(info.value.problems) == 3


# --- env_file ---------------------------------------------------------------------------------------------


def test_relative_env_file_is_relative_to_the_config_file(tmp_path):
    write(tmp_path / "conf" / "mirror-py.toml", '[env]\nenv_file = "app.env"\n')
    env = write(tmp_path / "conf" / "app.env", "A=1\n")
    (tmp_path / "conf" / "deep").mkdir()
    cfg = load_config(cwd=tmp_path / "conf" / "deep")
    assert cfg.env.env_file == str(env)


def test_env_file_from_a_flag_is_relative_to_cwd(tmp_path):
    write(tmp_path / "conf" / "mirror-py.toml", '[env]\nenv_file = "app.env"\n')
    write(tmp_path / "conf" / "app.env", "A=1\n")
    mine = write(tmp_path / "work" / "mine.env", "B=2\n")
    cfg = load_config(
        config_file=tmp_path / "conf" / "mirror-py.toml",
        overrides={"env.env_file": "mine.env"},
        cwd=tmp_path / "work",
    )
    assert cfg.env.env_file == str(mine)


def test_missing_env_file_is_reported_at_load_time(tmp_path):
    conf = write(tmp_path / "mirror-py.toml", '[env]\nenv_file = "missing.env"\n')
    with pytest.raises(ConfigError) as info:
        load_config(cwd=tmp_path)
    assert f'env.env_file = "missing.env" (from {conf})' in str(info.value)
    assert f"env file not found: {tmp_path / 'missing.env'}" in str(info.value)


def test_env_file_syntax_error_is_reported_at_load_time(tmp_path):
    write(tmp_path / "mirror-py.toml", '[env]\nenv_file = ".env"\n')
    write(tmp_path / ".env", "A=1\nnot a line\n")
    with pytest.raises(ConfigError, match=r"\.env, line 2: expected KEY=VALUE"):
        load_config(cwd=tmp_path)


def test_parse_env_file():
    text = """
# a comment
export A=1
B = two words   # trailing comment
C="quoted # not a comment"
D='single $NOT_EXPANDED \\n'
E="line1\\nline2\\t\\"q\\""
F=
G=a#b
H="multi
line"
I='x' # ok
export\tJ=tab
k.l-m=dotted
"""
    assert parse_env_file(text) == {
        "A": "1",
        "B": "two words",
        "C": "quoted # not a comment",
        "D": "single $NOT_EXPANDED \\n",
        "E": 'line1\nline2\t"q"',
        "F": "",
        "G": "a#b",
        "H": "multi\nline",
        "I": "x",
        "J": "tab",
        "k.l-m": "dotted",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A=1\nJUSTNAME\n", "f.env, line 2: expected KEY=VALUE"),
        ("1A=x\n", 'f.env, line 1: "1A" is not a valid variable name'),
        ("=x\n", "line 1"),
        ('A="open\nB=2\n', 'f.env, line 1: unterminated " quote'),
        ("A='x' y\n", 'line 1: unexpected "y" after the quoted value'),
    ],
)
def test_parse_env_file_errors(text, message):
    with pytest.raises(ConfigError) as info:
        parse_env_file(text, "f.env")
    assert message in str(info.value)


def test_read_env_file_missing(tmp_path):
    with pytest.raises(ConfigError, match="env file not found"):
        read_env_file(tmp_path / "none.env")


# --- environment merge ------------------------------------------------------------------------------------

LOCAL = {"PATH": "/usr/bin", "HOME": "/home/me", "LANG": "en_US.UTF-8", "EDITOR": "vim", "DB_URL": "local"}
REMOTE = {
    "PATH": "/app/bin",
    "HOME": "/root",
    "PYTHONPATH": "/app",
    "PYTHONUNBUFFERED": "1",
    "VIRTUAL_ENV": "/venv",
    "LD_PRELOAD": "x.so",
    "MIRROR_PY_SESSION": "remote",
    "HOSTNAME": "api-7d9f-abc",
    "DB_URL": "postgres://db:5432",
    "AWS_SECRET": "s",
    "AWS_REGION": "eu",
    "REDIS_HOST": "redis",
}


def test_merge_default_takes_target_values_except_never_list():
    env = merge_environment(LOCAL, REMOTE, EnvConfig())
    assert env["PATH"] == "/usr/bin" and env["HOME"] == "/home/me"
    assert "PYTHONPATH" not in env and "PYTHONUNBUFFERED" not in env
    assert "VIRTUAL_ENV" not in env and "LD_PRELOAD" not in env and "MIRROR_PY_SESSION" not in env
    assert env["HOSTNAME"] == "api-7d9f-abc", "in a pod HOSTNAME is the pod name; the app should see it"
    assert env["DB_URL"] == "postgres://db:5432"
    assert env["EDITOR"] == "vim" and env["LANG"] == "en_US.UTF-8"
    assert env["REDIS_HOST"] == "redis"


def test_merge_include_and_exclude():
    env = merge_environment(LOCAL, REMOTE, EnvConfig(include=["AWS_*", "DB_*", "PATH"], exclude=["AWS_SECRET"]))
    assert env["AWS_REGION"] == "eu" and "AWS_SECRET" not in env
    assert env["DB_URL"] == "postgres://db:5432"
    assert "REDIS_HOST" not in env
    assert env["PATH"] == "/usr/bin", "include cannot bring in a never-from-target variable"
    env = merge_environment(LOCAL, REMOTE, EnvConfig(include=[]))
    assert env == LOCAL


def test_merge_patterns_are_case_sensitive():
    env = merge_environment({}, {"aws_x": "1", "AWS_X": "2"}, EnvConfig(exclude=["AWS_*"]))
    assert env == {"aws_x": "1"}


def test_merge_env_file_then_override(tmp_path):
    env_file = write(tmp_path / ".env", "DB_URL=from-file\nFEATURE=on\nPATH=/file/bin\n")
    cfg = EnvConfig(env_file=str(env_file), override={"FEATURE": "off", "PYTHONPATH": "/mine"})
    env = merge_environment(LOCAL, REMOTE, cfg)
    assert env["DB_URL"] == "from-file"
    assert env["FEATURE"] == "off", "override wins over env_file"
    assert env["PATH"] == "/file/bin", "the user's own files may set anything"
    assert env["PYTHONPATH"] == "/mine"


def test_merge_disabled_ignores_the_target(tmp_path):
    env_file = write(tmp_path / ".env", "A=1\n")
    env = merge_environment(LOCAL, REMOTE, EnvConfig(enabled=False, env_file=str(env_file), override={"B": "2"}))
    assert env == {**LOCAL, "A": "1", "B": "2"}


def test_merge_does_not_modify_its_inputs():
    local, remote = dict(LOCAL), dict(REMOTE)
    merge_environment(local, remote, EnvConfig(override={"X": "1"}))
    assert local == LOCAL and remote == REMOTE


@pytest.mark.parametrize(
    ("name", "never"),
    [
        ("PATH", True),
        ("PYTHONDONTWRITEBYTECODE", True),
        ("MIRROR_PY_ANYTHING", True),
        ("LD_BIND_NOW", True),
        ("CONDA_DEFAULT_ENV", True),
        ("VIRTUAL_ENV_PROMPT", True),
        ("HOSTNAME", False),
        ("DATABASE_URL", False),
        ("PYTHON_LIKE_APP_SETTING", True),
        ("path", False),
    ],
)
def test_never_from_target(name, never):
    assert is_never_from_target(name) is never


# --- shim settings and schema -----------------------------------------------------------------------------


def test_shim_settings_round_trip_through_json(tmp_path):
    write(
        tmp_path / "mirror-py.toml",
        '[network.outgoing]\nudp = false\n[network.outgoing.filter]\nlocal = ["127.0.0.1", "*.corp:443"]\n'
        '[network.dns]\nenabled = true\n[network.dns.filter]\nremote = ["*.svc.cluster.local"]\n',
    )
    settings_ = json.loads(json.dumps(shim_settings(load_config(cwd=tmp_path))))
    assert settings_ == {
        "outgoing": {
            "enabled": True,
            "tcp": True,
            "udp": False,
            "filter": {"local": ["127.0.0.1", "*.corp:443"]},
            "local_listeners": "session",
        },
        "dns": {"enabled": True, "filter": {"remote": ["*.svc.cluster.local"]}},
        "incoming": {"mode": "mirror", "port_mapping": [], "ignore_ports": []},
        "fs": {"mode": "read", "read_write": [], "read_only": [], "local": [], "not_found": [], "mapping": []},
        "interpose": {"c_extensions": True},
    }
    traffic = TrafficFilter.from_json(settings_["outgoing"]["filter"])
    assert not traffic.is_remote("tcp", "127.0.0.1", 80)
    names = NameFilter.from_json(settings_["dns"]["filter"])
    assert names.is_remote("redis.default.svc.cluster.local") and not names.is_remote("example.com")


def test_shim_settings_defaults():
    assert shim_settings(Config()) == {
        "outgoing": {"enabled": True, "tcp": True, "udp": True, "filter": {}, "local_listeners": "session"},
        "dns": {"enabled": True, "filter": {}},
        "incoming": {"mode": "mirror", "port_mapping": [], "ignore_ports": []},
        "fs": {"mode": "read", "read_write": [], "read_only": [], "local": [], "not_found": [], "mapping": []},
        "interpose": {"c_extensions": True},
    }


def test_json_schema():
    schema = json_schema()
    json.dumps(schema)
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert {"target", "agent", "network", "env", "$schema"} <= set(schema["properties"])
    agent = schema["$defs"]["AgentConfig"]["properties"]
    assert agent["python"]["default"] == "python3"
    assert agent["startup_timeout"]["exclusiveMinimum"] == 0


# --- the loader raises ConfigError and nothing else -------------------------------------------------------

_known = [
    "target",
    "agent",
    "network",
    "outgoing",
    "dns",
    "env",
    "filter",
    "local",
    "remote",
    "path",
    "namespace",
    "python",
    "startup_timeout",
    "enabled",
    "tcp",
    "udp",
    "include",
    "exclude",
    "override",
    "env_file",
]
_keys = st.one_of(st.sampled_from(_known), st.text(st.characters(blacklist_categories=("Cs",)), max_size=8))
_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.sampled_from(["10.0.0.0/8", "tcp://:53", "*.x", "[::1]:80", "http://x", "pid/1", ".env", "/"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=4)),
    max_leaves=12,
)
_random_tables = st.dictionaries(_keys, _values, max_size=5)


def _table(**fields: st.SearchStrategy) -> st.SearchStrategy:
    """A table shaped like a section: some of its keys, each with a plausible or a random value, and
    sometimes a stray key, so the examples reach deep into the model instead of stopping at the top."""
    shaped = st.fixed_dictionaries({}, optional={k: st.one_of(v, _values) for k, v in fields.items()})
    stray = st.dictionaries(_keys, _values, max_size=1)
    return st.one_of(shaped, st.builds(lambda a, b: {**a, **b}, shaped, stray))


_rules = st.lists(
    st.one_of(st.sampled_from(["10.0.0.0/8", "udp://:53", "*.svc", "[::1]:80", ":0", "http://x"]), st.text()),
    max_size=3,
)
_names = st.lists(st.sampled_from(["AWS_*", "DB_URL", "*", ""]), max_size=3)
_filter = _table(local=_rules, remote=_rules)
_documents = st.one_of(
    _random_tables,
    _table(
        target=_table(path=st.sampled_from(["pid/1", "deploy/api", ""]), namespace=st.text(max_size=5)),
        agent=_table(python=st.text(max_size=5), startup_timeout=st.floats()),
        network=_table(
            outgoing=_table(enabled=st.booleans(), tcp=st.booleans(), udp=st.booleans(), filter=_filter),
            dns=_table(enabled=st.booleans(), filter=_filter),
        ),
        env=_table(
            enabled=st.booleans(),
            include=_names,
            exclude=_names,
            override=st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
            env_file=st.sampled_from([".env", "missing.env", "/", "sub/../.env"]),
        ),
    ),
)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (int, str)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _documents,
    st.dictionaries(st.sampled_from([*_known, "agent.python", "env.env_file", "a..b"]), _values),
    st.text(max_size=30),
)
def test_loader_raises_only_config_error(document, overrides, dotenv):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / ".env").write_text(dotenv, encoding="utf-8", errors="surrogatepass")
        toml_file = Path(tmp) / "mirror-py.toml"
        toml_file.write_text("".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in document.items()))
        json_file = Path(tmp) / "c.json"
        json_file.write_text(json.dumps(document))
        for kwargs in ({"cwd": tmp}, {"config_file": json_file}, {"cwd": tmp, "overrides": overrides}):
            try:
                cfg = load_config(**kwargs)
            except ConfigError as exc:
                assert str(exc)
                assert "Traceback" not in str(exc)
            else:
                json.dumps(shim_settings(cfg))
                assert set(cfg.sources) >= {"target.path", "env.override"}


def test_steal_timeouts_default_and_must_be_positive(tmp_path):
    cfg = load_config(cwd=tmp_path)
    assert (cfg.network.incoming.steal_timeout, cfg.network.incoming.header_timeout) == (30.0, 20.0)
    for key, value in (("steal_timeout", 0), ("header_timeout", -1), ("steal_timeout", "inf")):
        conf = tmp_path / "bad.toml"
        conf.write_text(f"[network.incoming]\n{key} = {value}\n")
        with pytest.raises(ConfigError) as info:
            load_config(conf, cwd=tmp_path)
        assert f"network.incoming.{key}" in str(info.value) and "\n" not in str(info.value).strip()
