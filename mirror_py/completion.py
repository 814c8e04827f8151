"""``mirror-py completion bash|zsh|fish``: the shell's completion script for mirror-py's commands and flags.

The script is click's own: on TAB the shell runs ``mirror-py`` with ``_MIRROR_PY_COMPLETE`` set, and the
command line parser answers with the subcommands, flags and choices (``--agent-mode``, ``--fs-mode``...) that
fit. Printing it from a command, rather than asking users to run ``_MIRROR_PY_COMPLETE=bash_source mirror-py``,
keeps the variable's name an implementation detail::

    eval "$(mirror-py completion bash)"                       # ~/.bashrc
    eval "$(mirror-py completion zsh)"                        # ~/.zshrc
    mirror-py completion fish > ~/.config/fish/completions/mirror-py.fish
"""

from __future__ import annotations

import os
from typing import Any

import click
from click.shell_completion import CompletionItem, get_completion_class

PROG_NAME = "mirror-py"
COMPLETE_VAR = "_MIRROR_PY_COMPLETE"
SHELLS = ("bash", "zsh", "fish")


TARGET_LOOKUP_TIMEOUT = 3.0  # seconds a TAB may wait for the cluster before it completes nothing


def complete_target(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """``--target`` values: what ``mirror-py ls`` lists in the namespace given so far (or the kubeconfig's), and
    the network namespaces of this machine after ``netns/``. A cluster that cannot be reached completes
    nothing: a TAB must never print an error into the command line."""
    if incomplete.startswith("netns/"):
        try:
            names = sorted(os.listdir("/run/netns"))
        except OSError:
            names = []
        return [CompletionItem(f"netns/{n}") for n in names if f"netns/{n}".startswith(incomplete)]
    if incomplete.startswith(("pid/", "docker/", "podman/")):
        return []
    return [CompletionItem(t) for t in _kube_targets(ctx.params) if t.startswith(incomplete)]


def _kube_targets(params: dict[str, Any]) -> list[str]:
    from .kube import api
    from .kube.listing import list_targets

    try:
        kube = api.load(params.get("kubeconfig"), params.get("context"), params.get("namespace"),
                        TARGET_LOOKUP_TIMEOUT)
        rows, _ = list_targets(kube, kube.namespace)
        return [row[0] for row in rows]
    except Exception:  # anything at all: completion says nothing rather than break the shell's line
        return []


def register(main: click.Group) -> None:
    @main.command("completion")
    @click.argument("shell", type=click.Choice(SHELLS))
    def completion(shell: str) -> None:
        """Print the completion script for SHELL (bash, zsh or fish).

        bash: eval "$(mirror-py completion bash)" in ~/.bashrc; zsh: the same in ~/.zshrc;
        fish: mirror-py completion fish > ~/.config/fish/completions/mirror-py.fish
        """
        cls = get_completion_class(shell)
        assert cls is not None  # every choice is a shell click knows
        click.echo(cls(main, {}, PROG_NAME, COMPLETE_VAR).source())
