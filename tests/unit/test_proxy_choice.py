"""Which proxy reaches the API server (mirror_py/kube/proxy.py): client-go's rules, decided once for the REST
calls and the exec stream."""

from __future__ import annotations

import sys

import pytest

from mirror_py.errors import MirrorError
from mirror_py.kube import proxy
from mirror_py.kube.proxy import choose, exempt

SERVER = "https://api.corp.example:6443"


def test_the_kubeconfig_proxy_url_wins_over_the_environment_and_no_proxy():
    env = {"HTTPS_PROXY": "http://env:3128", "NO_PROXY": "*"}
    chosen = choose(SERVER, "http://kube:8080", environ=env)
    assert (chosen.host, chosen.port, chosen.source) == ("kube", 8080, "the kubeconfig's proxy-url")


@pytest.mark.parametrize("env, expected", [
    ({"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2"}, "upper"),
    ({"https_proxy": "lower:2"}, "lower"),  # no scheme: an http proxy
    ({"HTTP_PROXY": "http://plain:3"}, None),  # an https server uses HTTPS_PROXY only
    ({"HTTPS_PROXY": ""}, None),
])
def test_the_environment_by_the_server_scheme(env, expected):
    chosen = choose(SERVER, None, environ=env)
    assert (chosen.host if chosen else None) == expected
    if chosen:
        assert chosen.scheme == "http"


def test_loopback_and_localhost_are_never_sent_to_an_environment_proxy():
    env = {"HTTPS_PROXY": "http://p:1", "HTTP_PROXY": "http://p:1"}
    for server in ("https://127.0.0.1:6443", "https://localhost:6443", "https://[::1]:6443", "http://127.0.0.5"):
        assert choose(server, None, environ=env) is None, server


@pytest.mark.parametrize("entry, host, port, expected", [
    ("*", "a.b", 443, True),
    ("10.0.0.0/8", "10.1.2.3", 443, True),
    ("10.0.0.0/8", "11.1.2.3", 443, False),
    ("fd00::/8", "fd00::1", 443, True),
    ("10.1.2.3", "10.1.2.3", 6443, True),
    ("10.1.2.3:6443", "10.1.2.3", 6443, True),
    ("10.1.2.3:443", "10.1.2.3", 6443, False),
    ("[fd00::1]:6443", "fd00::1", 6443, True),
    ("corp.example", "api.corp.example", 6443, True),
    ("corp.example", "corp.example", 6443, True),
    (".corp.example", "corp.example", 6443, False),
    (".corp.example", "api.corp.example", 6443, True),
    ("*.corp.example", "api.corp.example", 6443, True),
    ("api.corp.example:6443", "api.corp.example", 6443, True),
    ("api.corp.example:443", "api.corp.example", 6443, False),
    ("orp.example", "api.corp.example", 6443, False),
    (" , API.Corp.Example ", "api.corp.example", 6443, True),
])
def test_no_proxy_entries(entry, host, port, expected):
    assert exempt(host, port, entry) is expected


def test_no_proxy_applies_to_the_environment():
    env = {"HTTPS_PROXY": "http://p:1", "no_proxy": "example.org,.corp.example"}
    assert choose(SERVER, None, environ=env) is None
    assert choose("https://10.9.8.7:6443", None, environ=dict(env, NO_PROXY="10.9.0.0/16")) is None
    assert choose("https://10.9.8.7:6443", None, environ=env).host == "p"


def test_credentials_and_configured_headers_go_with_every_connect():
    chosen = choose(SERVER, "http://user%40corp:p%3Ass@proxy:3128", {"X-Team": "infra"}, environ={})
    assert chosen.headers == {"X-Team": "infra", "Proxy-Authorization": "Basic dXNlckBjb3JwOnA6c3M="}
    assert chosen.address == "http://proxy:3128"  # printable: no credentials


def test_socks_forms():
    for url in ("socks5://s:1080", "socks5h://s"):
        chosen = choose(SERVER, url, environ={})
        assert chosen.socks and chosen.port == 1080 and chosen.headers == {}


@pytest.mark.parametrize("url, message", [
    ("ftp://p:21", "the kubeconfig's proxy-url 'ftp://p:21': proxy scheme 'ftp' is not supported "
                   "(use http://, https://, socks5://, socks5h://)"),
    ("socks4://p:1080", "proxy scheme 'socks4' is not supported"),
    ("http://p:notaport", "the kubeconfig's proxy-url 'http://p:notaport' is not a valid proxy URL"),
    ("http://:3128", "is not a valid proxy URL: it names no host"),
])
def test_a_bad_proxy_is_a_clear_error(url, message):
    with pytest.raises(MirrorError) as err:
        choose(SERVER, url, environ={})
    assert message in str(err.value)


def test_socks_without_its_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "python_socks", None)
    with pytest.raises(MirrorError) as err:
        choose(SERVER, None, environ={"HTTPS_PROXY": "socks5h://s:1080"})
    assert str(err.value) == ("HTTPS_PROXY 'socks5h://s:1080' is a SOCKS proxy, which needs the python-socks "
                              "package: pip install 'mirror-py[socks]'")


def test_the_rest_client_takes_the_chosen_road(monkeypatch):
    """The client library is kept from choosing by itself (some versions read HTTPS_PROXY without NO_PROXY)."""
    import urllib3
    from kubernetes import client

    monkeypatch.setenv("HTTPS_PROXY", "http://env-proxy:3128")
    cfg = client.Configuration()
    cfg.host = SERVER
    from mirror_py.kube.api import _api_client

    from_env = _api_client(cfg, None).rest_client.pool_manager
    assert isinstance(from_env, urllib3.ProxyManager) and from_env.proxy.host == "env-proxy"
    assert proxy.of(cfg).host == "env-proxy"
    monkeypatch.setenv("NO_PROXY", "corp.example")
    exempted = _api_client(cfg, None)
    assert not isinstance(exempted.rest_client.pool_manager, urllib3.ProxyManager)
    assert proxy.of(cfg) is None
    through = _api_client(cfg, "http://u:p@kube-proxy:8080")
    manager = through.rest_client.pool_manager
    assert isinstance(manager, urllib3.ProxyManager) and manager.proxy.host == "kube-proxy"
    assert manager.proxy_headers == {"Proxy-Authorization": "Basic dTpw"}
