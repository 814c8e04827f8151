"""Shell completion: the script ``mirror-py completion bash`` prints, sourced in a real bash and asked the way
bash asks on TAB (COMP_WORDS, COMP_CWORD, then the completion function), completes commands, choices and,
against the sandbox cluster, the targets ``mirror-py ls`` lists."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import MIRROR_PY, ROOT, sandbox_cluster

BIN = Path(sys.executable).parent


def _complete(*words: str, env: dict | None = None) -> list[str]:
    """What bash offers for the last of ``words`` (the word being typed, possibly empty)."""
    quoted = " ".join(f"'{w}'" for w in ("mirror-py", *words))
    script = ('eval "$(mirror-py completion bash)"\n'
              f"COMP_WORDS=({quoted}); COMP_CWORD={len(words)}\n"
              "_mirror_py_completion mirror-py\n"
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    full = dict(env or os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                         timeout=60, env=full)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return [line for line in out.stdout.splitlines() if line]


def test_bash_completes_commands_flags_and_choices():
    assert (BIN / "mirror-py").exists(), "the console script of the installed package"
    assert _complete("po") == ["port-forward"]
    assert _complete("session", "st") == ["start", "status", "stop"]
    assert _complete("exec", "--agent-mode", "") == ["auto", "exec", "ephemeral", "job"]
    assert "--reverse" in _complete("port-forward", "--re")
    assert _complete("completion", "") == ["bash", "zsh", "fish"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_name_the_command(shell):
    out = subprocess.run([*MIRROR_PY, "completion", shell], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "_MIRROR_PY_COMPLETE" in out.stdout and "mirror-py" in out.stdout
    if shutil.which(shell):  # the script is valid in the shell itself when it is installed
        check = ["zsh", "-n"] if shell == "zsh" else ["fish", "--no-execute"]
        assert subprocess.run([*check], input=out.stdout, text=True, timeout=60).returncode == 0


def test_an_unknown_shell_is_one_line():
    out = subprocess.run([*MIRROR_PY, "completion", "tcsh"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "Invalid value for '{bash|zsh|fish}': 'tcsh' is not one of 'bash', 'zsh', 'fish'." in out.stderr


@pytest.fixture(scope="module")
def cluster():
    yield from sandbox_cluster(ROOT / "examples" / "k8s" / "sandbox.yaml")


def test_targets_complete_from_the_cluster(cluster):
    env = dict(os.environ, KUBECONFIG=cluster.kubeconfig)
    assert _complete("exec", "--target", "deployment/", env=env) == ["deployment/api", "deployment/redis"]
    pods = _complete("port-forward", "-n", "staging", "--target", "pod/", env=env)
    assert pods == [f"pod/{name}" for name in cluster.pod_names("staging")]
    # No cluster there: nothing offered, and nothing printed into the command line.
    assert _complete("exec", "--target", "dep", env=dict(os.environ, KUBECONFIG="/nonexistent")) == []
