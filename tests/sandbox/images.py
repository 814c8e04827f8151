"""Agent containers' own root file systems, per image.

On a node every container has its image's root file system; only the network (and with a shared process
namespace, the processes) is the pod's. In the sandbox, containers share the pod's mount namespace, which holds
the target's files (volumes, ConfigMaps, the files a test planted). An agent that read the target's files
through its own root instead of ``/proc/PID/root``, or that counted on a tool of the target's image, would pass
there and fail on a cluster. So ephemeral containers, and the containers of mirror-py's agent pods (job and
targetless), whose image is one of :data:`IMAGES` get a root of their own:

* a mount namespace made from the node's (the host's), never the pod's: none of the target's files;
* the files the kubelet gives every container of the pod (``/etc/hosts``, ``/etc/resolv.conf``,
  ``/etc/hostname``), copied from the pod;
* what the image lacks hidden: ``python:*`` images (the default ``python:3.12-slim``) have no iptables (an empty
  ``/usr/sbin``); ``*mirror-py-agent*`` images (built from ``k8s/Dockerfile.agent``) have it.

Exec into such a container joins the container's own namespaces, as a runtime's exec does. Other images and the
target containers keep the pod's mount namespace (the sandbox's volumes live there).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_UNSHARE = shutil.which("unshare") or "unshare"
_NSENTER = shutil.which("nsenter") or "nsenter"
KUBELET_FILES = ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname")
AGENT_LABEL = ("app.kubernetes.io/managed-by", "mirror-py")


@dataclass(frozen=True)
class Image:
    """What the sandbox knows of an image's root file system."""

    name: str
    hidden: tuple[str, ...] = ()  # directories that are empty in the image (an empty tmpfs over the host's)

    @property
    def has_iptables(self) -> bool:
        return "/usr/sbin" not in self.hidden


IMAGES: tuple[tuple[re.Pattern[str], Image], ...] = (
    (re.compile(r"mirror-py-agent"), Image("mirror-py agent image (python plus iptables)")),
    (re.compile(r"^(docker\.io/)?(library/)?python:"), Image("official python image", ("/usr/sbin",
                                                                                        "/usr/local/sbin"))),
)


def image_of(name: str) -> Image | None:
    for pattern, image in IMAGES:
        if pattern.search(name):
            return image
    return None


def wants_own_root(image: str, ephemeral: bool, pod_labels: Mapping[str, Any]) -> Image | None:
    """The image root an agent container gets, or None (the pod's mount namespace, as for every other)."""
    if not (ephemeral or pod_labels.get(AGENT_LABEL[0]) == AGENT_LABEL[1]):
        return None
    return image_of(image)


def start_argv(image: Image, pod_pid: int, files_dir: Path, argv: Sequence[str], cwd: str | None) -> list[str]:
    """The host command line that starts ``argv`` in the pod's network and UTS namespaces (``pod_pid`` 0: the
    host's, for a hostPID/hostNetwork pod) in a new mount namespace holding ``image``'s root."""
    files_dir.mkdir(parents=True, exist_ok=True)
    q = shlex.quote
    script = ["set -e"]
    for hidden in image.hidden:
        if os.path.isdir(hidden) and not os.path.islink(hidden):
            script.append(f"mount -t tmpfs -o mode=0755 mpy-image {q(hidden)}")
    if pod_pid:
        for path in KUBELET_FILES:
            copy = files_dir / path.strip("/").replace("/", "_")
            with contextlib.suppress(OSError):
                copy.write_bytes(Path(f"/proc/{pod_pid}/root{path}").read_bytes())
                script.append(f"mount --bind {q(str(copy))} {q(path)}")
    if cwd:
        script.append(f"cd {q(cwd)}")
    script.append('exec "$@"')
    enter = [_NSENTER, "-t", str(pod_pid), "-n", "-u", "--"] if pod_pid else []
    return [*enter, _UNSHARE, "--mount", "--propagation", "private", "--", "/bin/sh", "-c", "\n".join(script),
            "sh", *argv]


def exec_argv(container_pid: int, argv: Sequence[str], cwd: str | None) -> list[str]:
    """Exec into such a container: its own mount, network and UTS namespaces."""
    prefix = [_NSENTER, "-t", str(container_pid), "-n", "-m", "-u", "--"]
    if cwd:
        prefix += ["env", "-C", cwd, "--"]
    return [*prefix, *argv]


def popen(sandbox: Any, argv: Sequence[str], env: Mapping[str, str], **kwargs: Any) -> subprocess.Popen:
    """Starts a container's process outside the pod's ``run`` (which would enter the pod's mount namespace),
    registered with the pod so that closing it kills the process too."""
    proc = subprocess.Popen(list(argv), env=dict(env), start_new_session=True, **kwargs)
    lock = getattr(sandbox, "_lock", None)
    procs = getattr(sandbox, "_procs", None)
    if procs is not None:
        with lock if lock is not None else contextlib.nullcontext():
            procs.append(proc)
    return proc
