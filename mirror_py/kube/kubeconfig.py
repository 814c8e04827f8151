"""Several kubeconfig files read as one, by kubectl's rules.

``KUBECONFIG=a:b`` is common (a company's clusters in one file, a personal kind cluster in another), and a
context named in ``b`` must work exactly as with kubectl. kubectl merges the files in order:

- every named cluster, user and context comes from the FIRST file that defines that name (later files never
  override an entry, not even one key of it);
- ``current-context`` comes from the first file that sets it;
- relative paths inside a file (certificate and key files, a token file, an exec plugin's command given as a
  path) are relative to the directory of the file that names them, not to the working directory nor to the
  first file;
- a file that does not exist is skipped; an empty one is an empty configuration.

The official client's own merger resolves every relative path against the first file, so mirror-py merges
here and hands the library one dictionary whose paths are already absolute.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

# Keys that hold a file path, per section; resolved against the naming file's directory.
_PATH_KEYS = {
    "clusters": ("certificate-authority",),
    "users": ("client-certificate", "client-key", "tokenFile"),
}
_SECTIONS = {"clusters": "cluster", "users": "user", "contexts": "context"}


class KubeconfigError(ValueError):
    """A file that cannot be read or has the wrong shape; ``path`` names it."""

    def __init__(self, path: str, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.path = path
        self.cause = cause


@dataclass
class Merged:
    """The merged configuration, and for each named entry the file it came from (for messages)."""

    files: list[str]
    config: dict[str, Any]
    origin: dict[tuple[str, str], str] = field(default_factory=dict)

    def contexts(self) -> list[dict[str, Any]]:
        return list(self.config["contexts"])

    @property
    def current_context(self) -> str | None:
        return self.config.get("current-context") or None

    def where(self) -> str:
        """The files read, as the user wrote them in KUBECONFIG."""
        return os.pathsep.join(self.files)


def merge(files: list[str]) -> Merged:
    """The files, in order, merged as kubectl merges them (module docstring). Raises KubeconfigError naming
    the file for unreadable YAML or a file of the wrong shape."""
    import yaml

    config: dict[str, Any] = {"apiVersion": "v1", "kind": "Config", "clusters": [], "users": [], "contexts": []}
    origin: dict[tuple[str, str], str] = {}
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise KubeconfigError(path, exc) from None
        if data is None:
            continue
        if not isinstance(data, dict):
            raise KubeconfigError(path, TypeError(f"the file holds a {type(data).__name__}, not a mapping"))
        base = os.path.dirname(os.path.abspath(path))
        for section, inner in _SECTIONS.items():
            entries = data.get(section) or []
            if not isinstance(entries, list):
                raise KubeconfigError(path, TypeError(f"{section} is a {type(entries).__name__}, not a list"))
            for entry in entries:
                if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                    raise KubeconfigError(path, TypeError(f"an entry of {section} has no name"))
                if (section, entry["name"]) in origin:
                    continue  # the first file that names it wins, whole
                origin[(section, entry["name"])] = path
                config[section].append(_resolved(section, inner, entry, base))
        if not config.get("current-context") and data.get("current-context"):
            config["current-context"] = data["current-context"]
    return Merged(list(files), config, origin)


def _resolved(section: str, inner: str, entry: dict[str, Any], base: str) -> dict[str, Any]:
    """A copy of ``entry`` whose relative paths are made absolute against ``base``."""
    body = entry.get(inner)
    if not isinstance(body, dict):
        return entry
    body = dict(body)
    for key in _PATH_KEYS.get(section, ()):
        value = body.get(key)
        if isinstance(value, str) and value:
            value = os.path.expanduser(value)
            body[key] = value if os.path.isabs(value) else os.path.join(base, value)
    plugin = body.get("exec")
    if section == "users" and isinstance(plugin, dict):
        command = plugin.get("command")
        # a bare name is looked up on PATH, as a shell would; only a command written as a path is relative
        if isinstance(command, str) and os.sep in command and not os.path.isabs(command):
            body["exec"] = dict(plugin, command=os.path.join(base, command))
    return dict(entry, **{inner: body})
