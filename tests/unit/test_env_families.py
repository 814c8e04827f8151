"""Target variables that would let the target run code on the laptop stay local unless the user names them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mirror_py import env_families
from mirror_py.config import EnvConfig, merge_environment, target_variables

HOSTILE = {
    "BASH_ENV": "/tmp/x.sh",
    "BASH_FUNC_ls%%": "() { touch /tmp/owned; }",
    "PERL5OPT": "-Mevil",
    "GIT_CONFIG_COUNT": "1",
    "GIT_SSH_COMMAND": "sh -c evil",
    "NODE_OPTIONS": "--require /tmp/x.js",
    "JAVA_TOOL_OPTIONS": "-javaagent:/tmp/x.jar",
    "PROMPT_COMMAND": "evil",
    "KUBECONFIG": "/pod/kubeconfig",
    "SSLKEYLOGFILE": "/tmp/keys",
    "SSL_CERT_FILE": "/etc/pod-ca.pem",
    "XDG_CONFIG_HOME": "/pod/config",
    "EDITOR": "evil",
    "PAGER": "evil",
    "BROWSER": "evil",
    "PYTEST_ADDOPTS": "-p evil",
    "GCONV_PATH": "/tmp/gconv",
    "DOCKER_HOST": "tcp://evil:2375",
}
ORDINARY = {"DATABASE_URL": "postgres://db/app", "AWS_ROLE_ARN": "arn:aws:iam::1:role/app", "HOSTNAME": "api-1",
            "NODE_ENV": "production", "LANG": "C.UTF-8", "HTTPS_PROXY": "http://proxy:3128"}


def test_hostile_families_stay_local_and_are_reported_ordinary_variables_come():
    taken, kept = target_variables({**HOSTILE, **ORDINARY}, EnvConfig())
    assert taken == ORDINARY
    assert kept == sorted(HOSTILE)
    env = merge_environment({"EDITOR": "vim", "PATH": "/usr/bin"}, {**HOSTILE, **ORDINARY}, EnvConfig())
    assert env["EDITOR"] == "vim"
    assert "BASH_ENV" not in env and env["DATABASE_URL"] == "postgres://db/app"


@pytest.mark.parametrize(
    ("include", "taken"),
    [
        (["BASH_ENV"], {"BASH_ENV"}),
        (["GIT_*"], {"GIT_CONFIG_COUNT", "GIT_SSH_COMMAND"}),
        (["*"], {"DATABASE_URL"}),  # only wildcards: the user did not name them
        (["?*", "[A-Z]*"], {"DATABASE_URL"}),
        (["KUBECONFIG", "DATABASE_URL"], {"KUBECONFIG", "DATABASE_URL"}),
    ],
)
def test_include_naming_a_kept_variable_takes_it(include, taken):
    got, kept = target_variables({**HOSTILE, "DATABASE_URL": "x"}, EnvConfig(include=include))
    assert set(got) == taken
    assert not set(kept) & taken


def test_exclude_and_disabled_still_win():
    assert target_variables(HOSTILE, EnvConfig(include=["BASH_ENV"], exclude=["BASH_*"])) == ({}, [])
    assert target_variables(HOSTILE, EnvConfig(enabled=False)) == ({}, [])


def test_override_sets_a_kept_variable():
    env = merge_environment({}, HOSTILE, EnvConfig(override={"EDITOR": "nano"}))
    assert env["EDITOR"] == "nano"


def test_note_names_what_was_kept_and_the_way_out():
    text = env_families.note(sorted(HOSTILE))
    assert text.startswith(f"kept {len(HOSTILE)} of the target's environment variables on this machine: ")
    assert "and 10 more" in text and "env.include" in text
    assert "\n" not in env_families.note(["EVIL\n\x1b[2Jmirror-py: error: x"])


def test_every_family_is_documented():
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    section = doc[doc.index("#### Kept on this machine"):]
    section = section[: section.index("\n## ")] if "\n## " in section else section
    listed = set(re.findall(r"`([A-Z0-9_%]+\*?)`", section))
    expected = {n for f in env_families.FAMILIES for n in f.names} | {
        p + "*" for f in env_families.FAMILIES for p in f.prefixes}
    assert listed >= expected, sorted(expected - listed)
    for family in env_families.FAMILIES:
        assert family.name in section
