"""KUBECONFIG with several files is read as kubectl reads it (mirror_py/kube/kubeconfig.py)."""

from __future__ import annotations

import os

import pytest
import yaml

from mirror_py.errors import MirrorError
from mirror_py.kube import api
from mirror_py.kube.kubeconfig import merge


def _write(path, **config):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", **config}))
    return str(path)


def _cluster(name, server, **more):
    return {"name": name, "cluster": {"server": server, **more}}


def _context(name, cluster, user, **more):
    return {"name": name, "context": {"cluster": cluster, "user": user, **more}}


def test_first_file_wins_per_entry_and_sets_the_current_context(tmp_path):
    first = _write(tmp_path / "a" / "config", clusters=[_cluster("c", "https://first:6443")],
                   contexts=[_context("shared", "c", "u1")], users=[{"name": "u1", "user": {"token": "t1"}}])
    second = _write(tmp_path / "b" / "config", clusters=[_cluster("c", "https://second:6443"),
                                                        _cluster("d", "https://d:6443")],
                    contexts=[_context("shared", "d", "u2"), _context("only-b", "d", "u2")],
                    users=[{"name": "u2", "user": {"token": "t2"}}], **{"current-context": "only-b"})
    merged = merge([first, second])
    by_name = {c["name"]: c for c in merged.config["clusters"]}
    assert by_name["c"]["cluster"]["server"] == "https://first:6443"
    assert by_name["d"]["cluster"]["server"] == "https://d:6443"
    contexts = {c["name"]: c["context"] for c in merged.contexts()}
    assert contexts["shared"]["cluster"] == "c"  # the whole entry of the first file, not a mix
    assert merged.current_context == "only-b"  # the first file sets none; the second's applies
    assert merged.origin[("contexts", "only-b")] == second


def test_relative_paths_are_relative_to_the_file_that_names_them(tmp_path):
    (tmp_path / "b" / "certs").mkdir(parents=True)
    first = _write(tmp_path / "a" / "config", **{"current-context": "kind"})
    second = _write(tmp_path / "b" / "config",
                    clusters=[_cluster("kind", "https://k:6443", **{"certificate-authority": "certs/ca.crt"})],
                    users=[{"name": "me", "user": {"client-certificate": "certs/me.crt", "client-key": "/abs/me.key",
                                                   "exec": {"command": "./bin/token", "apiVersion": "v1"}}}],
                    contexts=[_context("kind", "kind", "me")])
    merged = merge([first, second])
    base = os.path.join(str(tmp_path), "b")
    assert merged.config["clusters"][0]["cluster"]["certificate-authority"] == os.path.join(base, "certs/ca.crt")
    user = merged.config["users"][0]["user"]
    assert user["client-certificate"] == os.path.join(base, "certs/me.crt")
    assert user["client-key"] == "/abs/me.key"
    assert user["exec"]["command"] == os.path.join(base, "./bin/token")


def test_load_uses_a_context_of_the_second_file(tmp_path, monkeypatch):
    """Before, only the first file was read: the context was 'not in kubeconfig'."""
    ca = tmp_path / "b" / "ca.crt"
    ca.parent.mkdir(parents=True)
    ca.write_text("not read at load")
    first = _write(tmp_path / "a" / "config", clusters=[_cluster("work", "https://work:6443")],
                   users=[{"name": "w", "user": {"token": "tw"}}], contexts=[_context("work", "work", "w")],
                   **{"current-context": "work"})
    second = _write(tmp_path / "b" / "config",
                    clusters=[_cluster("kind", "https://kind:6443", **{"certificate-authority": "ca.crt"})],
                    users=[{"name": "k", "user": {"token": "tk"}}],
                    contexts=[_context("kind", "kind", "k", namespace="dev")])
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([first, str(tmp_path / "missing"), second]))
    kube = api.load(context="kind")
    assert kube.configuration.host == "https://kind:6443"
    assert kube.configuration.ssl_ca_cert == str(ca)
    assert kube.namespace == "dev"
    assert api.load().configuration.host == "https://work:6443"  # current-context of the first file


def test_an_unknown_context_names_every_file(tmp_path, monkeypatch):
    first = _write(tmp_path / "a", contexts=[_context("x", "c", "u")])
    second = _write(tmp_path / "b", contexts=[_context("y", "c", "u")])
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([first, second]))
    with pytest.raises(MirrorError) as err:
        api.load(context="z")
    assert str(err.value) == (f"context 'z' is not in kubeconfig {first}{os.pathsep}{second} (contexts: x, y); "
                              "pass --context NAME")


def test_a_broken_second_file_is_named(tmp_path, monkeypatch):
    first = _write(tmp_path / "a", contexts=[_context("x", "c", "u")])
    second = tmp_path / "b"
    second.write_text("clusters: [\n - bad")
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([first, str(second)]))
    with pytest.raises(MirrorError) as err:
        api.load(context="x")
    assert str(err.value).startswith(f"cannot read kubeconfig {second}: it is not valid YAML")
