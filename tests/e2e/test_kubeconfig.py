"""The kubeconfig as kubectl reads it, against the sandbox API server: several files in KUBECONFIG."""

from __future__ import annotations

import base64
import ipaddress
import os
import subprocess
import sys

import pytest
import yaml

from .conftest import MIRROR_PY, ROOT, sandbox_cluster
from .proxies import ConnectProxy, Socks5Proxy


@pytest.fixture(scope="module")
def cluster():
    yield from sandbox_cluster(ROOT / "examples" / "k8s" / "sandbox.yaml")


def _mirror(env: dict, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MIRROR_PY, *argv], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **env), cwd=str(ROOT))


def test_a_context_of_the_second_kubeconfig_file(cluster, tmp_path):
    """The sandbox's context lives in the second file, with its CA as a file named relative to that file; the
    first file sets the current context. Before, only the first file was read."""
    sandbox = yaml.safe_load(open(cluster.kubeconfig))
    (tmp_path / "work").mkdir()
    (tmp_path / "kind" / "pki").mkdir(parents=True)
    first = tmp_path / "work" / "config"
    first.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sandbox",
        "clusters": [{"name": "elsewhere", "cluster": {"server": "https://127.0.0.1:1"}}],
        "contexts": [{"name": "work", "context": {"cluster": "elsewhere", "user": "nobody"}}],
        "users": [{"name": "nobody", "user": {"token": "x"}}],
    }))
    entry = sandbox["clusters"][0]
    (tmp_path / "kind" / "pki" / "ca.crt").write_bytes(base64.b64decode(entry["cluster"].pop(
        "certificate-authority-data")))
    entry["cluster"]["certificate-authority"] = "pki/ca.crt"
    sandbox.pop("current-context")
    second = tmp_path / "kind" / "config"
    second.write_text(yaml.safe_dump(sandbox))
    out = _mirror({"KUBECONFIG": f"{first}{os.pathsep}{second}"}, "ls", "--request-timeout", "10")
    assert out.returncode == 0, out.stderr
    assert "deployment/api" in out.stdout


# ------------------------------------------------------------------------------------------------ proxies
# A session's REST calls and its exec stream take the same road to the API server. The proxies count the
# tunnels they opened; the app prints the pod's host name, which only the exec stream's agent can give it.

HOSTNAME_APP = "import socket; print(socket.gethostname())"


def _kubeconfig(cluster, tmp_path, *, server_host: str = "127.0.0.1", proxy_url: str | None = None) -> str:
    config = yaml.safe_load(open(cluster.kubeconfig))
    entry = config["clusters"][0]["cluster"]
    entry["server"] = entry["server"].replace("127.0.0.1", server_host)
    if proxy_url:
        entry["proxy-url"] = proxy_url
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _hostname_through(kubeconfig: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k.lower() not in ("https_proxy", "http_proxy", "no_proxy")}
    full = dict(clean, PYTHONPATH=str(ROOT), KUBECONFIG=kubeconfig, **(env or {}))
    return subprocess.run([*MIRROR_PY, "exec", "--target", "deploy/api", "-n", "staging", "--", sys.executable,
                           "-c", HOSTNAME_APP], capture_output=True, text=True, timeout=120, env=full,
                          cwd=str(ROOT))


def _api_pod(cluster) -> str:
    return next(name for name in cluster.pod_names("staging") if name.startswith("api-"))


def test_kubeconfig_proxy_url_with_credentials_carries_rest_and_exec(cluster, tmp_path):
    """Before, the REST calls sent no Proxy-Authorization (the proxy answered 407): user information in
    proxy-url is sent as Basic credentials on every tunnel, the exec stream's included."""
    with ConnectProxy(credentials=("mirror", "s3cret:/x")) as proxy:
        path = _kubeconfig(cluster, tmp_path, proxy_url=f"http://mirror:s3cret%3A%2Fx@127.0.0.1:{proxy.port}")
        out = _hostname_through(path)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == _api_pod(cluster)
        assert proxy.refused == 0
        # at least one tunnel for the REST calls and one for the exec stream, all to the API server
        assert len(proxy.tunnels) >= 2, proxy.tunnels
        assert {port for _host, port in proxy.tunnels} == {cluster.apiserver.port}


@pytest.mark.parametrize("form", ["cidr", "ip-and-port"])
def test_no_proxy_exempts_the_api_server_for_the_exec_stream_too(cluster, tmp_path, form):
    """HTTPS_PROXY with NO_PROXY naming the API server (its address is not loopback, which is never proxied):
    nothing goes through the proxy. Before, the exec websocket went through it anyway. The name forms of
    NO_PROXY are in tests/unit/test_proxy_choice.py."""
    gateway = cluster.network.gateway
    no_proxy = {"cidr": f"example.com,{ipaddress.ip_network(gateway + '/16', strict=False)}",
                "ip-and-port": f"example.com,{gateway}:{cluster.apiserver.port}"}[form]
    with ConnectProxy() as proxy:
        path = _kubeconfig(cluster, tmp_path, server_host=gateway)
        out = _hostname_through(path, {"HTTPS_PROXY": f"http://127.0.0.1:{proxy.port}", "NO_PROXY": no_proxy})
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == _api_pod(cluster)
        assert proxy.tunnels == []


@pytest.mark.parametrize("where", ["kubeconfig socks5", "HTTPS_PROXY socks5h"])
def test_a_socks5_proxy_carries_rest_and_exec(cluster, tmp_path, where):
    """Before, a socks5:// proxy ended in a traceback (the client library's SOCKS support needs a package
    mirror-py does not use)."""
    gateway = cluster.network.gateway
    with Socks5Proxy() as proxy:
        if where.startswith("kubeconfig"):
            path, env = _kubeconfig(cluster, tmp_path, proxy_url=f"socks5://127.0.0.1:{proxy.port}"), {}
        else:
            path = _kubeconfig(cluster, tmp_path, server_host=gateway)
            env = {"HTTPS_PROXY": f"socks5h://127.0.0.1:{proxy.port}", "NO_PROXY": "example.com,10.255.0.0/16"}
        out = _hostname_through(path, env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == _api_pod(cluster)
        assert len(proxy.tunnels) >= 2, proxy.tunnels
        assert {port for _host, port in proxy.tunnels} == {cluster.apiserver.port}


def test_a_proxy_refusing_the_tunnel_is_one_line(cluster, tmp_path):
    with ConnectProxy(credentials=("mirror", "right")) as proxy:
        path = _kubeconfig(cluster, tmp_path, proxy_url=f"http://mirror:wrong@127.0.0.1:{proxy.port}")
        out = _hostname_through(path)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mirror-py: error: "), out.stderr
    assert "407" in lines[0] and "wrong" not in lines[0], lines[0]


def test_an_unsupported_proxy_scheme_is_one_line(cluster, tmp_path):
    out = _hostname_through(_kubeconfig(cluster, tmp_path, proxy_url="ftp://127.0.0.1:21"))
    assert out.returncode == 1
    assert out.stderr.strip() == ("mirror-py: error: the kubeconfig's proxy-url 'ftp://127.0.0.1:21': proxy scheme "
                                  "'ftp' is not supported (use http://, https://, socks5://, socks5h://)")


# ------------------------------------------------------------------------------------------------ ls and RBAC


def test_ls_shows_what_it_may_list_and_names_what_it_may_not(cluster, tmp_path):
    """A Role granting pods and deployments but no other workload kind: before, ls failed as a whole."""
    token = cluster.add_user("lister", [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list"]},
    ], ["staging"])
    config = yaml.safe_load(open(cluster.kubeconfig))
    config["users"].append({"name": "lister", "user": {"token": token}})
    config["contexts"].append({"name": "lister", "context": {"cluster": "sandbox", "user": "lister",
                                                              "namespace": "staging"}})
    config["current-context"] = "lister"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    out = _mirror({"KUBECONFIG": str(path)}, "ls", "--request-timeout", "10")
    assert out.returncode == 0, out.stderr
    assert "deployment/api" in out.stdout and f"pod/{_api_pod(cluster)}" in out.stdout
    assert out.stderr.splitlines() == [
        f'mirror-py: cannot list {resource} in namespace staging: forbidden; needs the RBAC verb list on '
        f'{resource}.{group} (apiGroups: ["{group}"]) there'
        for resource, group in (("statefulsets", "apps"), ("daemonsets", "apps"), ("jobs", "batch"))
    ]
