"""Which proxy, if any, stands between mirror-py and the API server: decided once, as kubectl decides it.

mirror-py reaches the API server two ways: the REST calls (the official client's urllib3 pool) and the exec
websocket (its own asyncio connection). Both must take the same road, or a session half works: its REST calls
honour NO_PROXY while its exec stream goes through the proxy, or the other way round. So the decision is made
here, once per kubeconfig context, recorded on the client Configuration (``mirror_proxy``), and both roads are
built from it: :func:`install` gives the REST client a pool that uses it, and ``transport/dial.py`` opens the
exec stream's connection through it.

The rules are client-go's:

- the cluster's ``proxy-url`` in the kubeconfig, when set, is used for every request, NO_PROXY or not;
- otherwise the environment: ``HTTPS_PROXY`` (then ``https_proxy``) for an https server, ``HTTP_PROXY`` (then
  ``http_proxy``) for an http one; a value without a scheme is an http proxy;
- ``NO_PROXY`` (then ``no_proxy``) exempts the server by ``*``, by an IP address or a CIDR containing the
  server's address, by a domain (``example.com`` matches it and its subdomains, ``.example.com`` and
  ``*.example.com`` only subdomains), each optionally with ``:port``; ``localhost`` and loopback addresses are
  never sent to an environment proxy;
- ``http://``, ``https://``, ``socks5://`` and ``socks5h://`` proxies; both SOCKS forms let the proxy resolve
  the server's name, as kubectl's SOCKS dialer does. User information in the URL becomes a Basic
  ``Proxy-Authorization`` header, sent with every CONNECT together with the Configuration's ``proxy_headers``.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import MirrorError

SCHEMES = ("http", "https", "socks5", "socks5h")


@dataclass(frozen=True)
class Proxy:
    """A proxy to reach the API server through; ``source`` says where it was configured (for messages)."""

    scheme: str
    host: str
    port: int
    source: str
    username: str | None = None
    password: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def socks(self) -> bool:
        return self.scheme.startswith("socks")

    @property
    def address(self) -> str:
        """The proxy's URL without its credentials: safe to print."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def url(self) -> str:
        """The URL with credentials, for the SOCKS library."""
        if self.username is None:
            return self.address
        from urllib.parse import quote

        host = f"[{self.host}]" if ":" in self.host else self.host
        credentials = f"{quote(self.username, safe='')}:{quote(self.password or '', safe='')}"
        return f"{self.scheme}://{credentials}@{host}:{self.port}"


def choose(server: str, proxy_url: str | None, proxy_headers: Mapping[str, str] | None = None,
           environ: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy for the API server at ``server`` (its URL), from the kubeconfig's ``proxy_url`` or else the
    environment; None for a direct connection. A malformed or unsupported proxy is a MirrorError."""
    environ = os.environ if environ is None else environ
    if proxy_url:
        return parse(proxy_url, "the kubeconfig's proxy-url", proxy_headers)
    parts = urlsplit(server)
    names = ("HTTPS_PROXY", "https_proxy") if parts.scheme == "https" else ("HTTP_PROXY", "http_proxy")
    name, value = next(((n, environ[n]) for n in names if environ.get(n)), (None, None))
    if not value or name is None:
        return None
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if _loopback(host) or exempt(host, port, environ.get("NO_PROXY") or environ.get("no_proxy") or ""):
        return None
    return parse(value, name, proxy_headers)


def parse(value: str, source: str, headers: Mapping[str, str] | None = None) -> Proxy:
    """A proxy URL as client-go reads it (no scheme means http)."""
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise MirrorError(f"{source} {value!r} is not a valid proxy URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise MirrorError(f"{source} {value!r}: proxy scheme {scheme!r} is not supported "
                          f"(use {', '.join(s + '://' for s in SCHEMES)})")
    if not parts.hostname:
        raise MirrorError(f"{source} {value!r} is not a valid proxy URL: it names no host")
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme, 1080)
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    sent = dict(headers or {})
    if user is not None and scheme in ("http", "https") and not any(
            k.lower() == "proxy-authorization" for k in sent):
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        sent["Proxy-Authorization"] = f"Basic {token}"
    if scheme.startswith("socks"):
        _need_socks_library(source, value)
    return Proxy(scheme, parts.hostname, port, source, user, password, sent)


def exempt(host: str, port: int, no_proxy: str) -> bool:
    """Whether NO_PROXY's entries exempt ``host``:``port`` (module docstring)."""
    host = host.strip("[]").lower().rstrip(".")
    try:
        address: Any = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if "/" in entry:
            try:
                if address is not None and address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name, entry_port = _split_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        try:
            entry_address: Any = ipaddress.ip_address(name)
        except ValueError:
            entry_address = None
        if entry_address is not None:  # an address entry matches that address only
            if address == entry_address:
                return True
            continue
        name = name.rstrip(".")
        if name.startswith("*."):
            name = name[1:]
        if name.startswith("."):
            if host.endswith(name):
                return True
        elif host == name or host.endswith("." + name):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port``, ``v6`` → (host, port or None)."""
    if entry.startswith("["):
        name, _, rest = entry[1:].partition("]")
        return name, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        return name, int(port) if port.isdigit() else None
    return entry, None


def _loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _need_socks_library(source: str, value: str) -> None:
    try:
        import python_socks  # noqa: F401
    except ImportError:
        raise MirrorError(f"{source} {value!r} is a SOCKS proxy, which needs the python-socks package: "
                          "pip install 'mirror-py[socks]'") from None


def of(configuration: Any) -> Proxy | None:
    """The decision recorded on a client Configuration by :func:`install`."""
    return getattr(configuration, "mirror_proxy", None)


def install(api_client: Any, proxy: Proxy | None) -> None:
    """Records the decision on the client's Configuration and gives its REST client a connection pool that
    takes that road, whatever the client library would have read from the environment by itself."""
    cfg = api_client.configuration
    cfg.mirror_proxy = proxy
    rest = api_client.rest_client
    old = rest.pool_manager
    kw = {k: v for k, v in old.connection_pool_kw.items() if not k.startswith("_proxy")}
    num_pools = getattr(old.pools, "_maxsize", 4)
    import urllib3

    if proxy is None:
        rest.pool_manager = urllib3.PoolManager(num_pools=num_pools, **kw)
    elif not proxy.socks:
        rest.pool_manager = urllib3.ProxyManager(proxy.address, num_pools=num_pools,
                                                 proxy_headers=dict(proxy.headers), **kw)
    else:
        rest.pool_manager = _socks_pool_manager(proxy, num_pools, kw)
    old.clear()


def socks_socket(proxy: Proxy, host: str, port: int, timeout: float | None) -> Any:
    """A blocking socket connected to ``host``:``port`` through the SOCKS proxy (the proxy resolves names)."""
    from python_socks.sync import Proxy as SocksProxy

    url = proxy.url().replace("socks5h://", "socks5://", 1)  # the library's name; rdns says who resolves
    return SocksProxy.from_url(url, rdns=True).connect(dest_host=host, dest_port=port, timeout=timeout)


def _socks_pool_manager(proxy: Proxy, num_pools: int, kw: dict[str, Any]) -> Any:
    """A urllib3 pool manager whose connections are opened through the SOCKS proxy; TLS to the API server and
    everything else stay urllib3's own."""
    from python_socks import ProxyError, ProxyTimeoutError
    from urllib3 import PoolManager
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

    class _ThroughSocks:
        def _new_conn(self: Any) -> Any:
            timeout = self.timeout if isinstance(self.timeout, (int, float)) else None
            try:
                sock = socks_socket(proxy, self._dns_host, self.port, timeout)
            except ProxyTimeoutError as exc:
                raise ConnectTimeoutError(self, f"SOCKS proxy {proxy.address} timed out: {exc}") from exc
            except (ProxyError, OSError) as exc:
                raise NewConnectionError(self, f"SOCKS proxy {proxy.address}: {exc}") from exc
            for option in self.socket_options or ():
                sock.setsockopt(*option)
            return sock

    class _Http(_ThroughSocks, HTTPConnection):
        pass

    class _Https(_ThroughSocks, HTTPSConnection):
        pass

    class _HttpPool(HTTPConnectionPool):
        ConnectionCls = _Http

    class _HttpsPool(HTTPSConnectionPool):
        ConnectionCls = _Https

    manager = PoolManager(num_pools=num_pools, **kw)
    manager.pool_classes_by_scheme = {"http": _HttpPool, "https": _HttpsPool}
    return manager
