"""Reaching the Kubernetes API as kubectl would: the same kubeconfig, context and namespace rules.

The official client is synchronous; the session calls it from worker threads. Its errors are turned into one
line the user can act on, as kubectl prints them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import MirrorError


@dataclass
class KubeContext:
    api_client: Any  # kubernetes.client.ApiClient
    configuration: Any  # kubernetes.client.Configuration
    namespace: str
    context: str
    request_timeout: float = 30.0  # seconds for the connect and for the answer of each request
    # A connection to the API server opened while the target is looked up, for the start's first exec stream
    # (mirror_py/transport/warm.py); None when there is none.
    warm: Any = None

    def get_json(self, path: str, **query: str) -> Any:
        """GET ``path``: the object as the API server sent it (camelCase JSON)."""
        return self.request_json("GET", path, **query)

    def list_items(self, path: str, **query: str) -> list[dict]:
        """The objects of a list (GET on a collection)."""
        return self.get_json(path, **query).get("items") or []

    def request_json(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                     **query: str) -> Any:
        """One API request with a JSON answer, made with the client's own connection pool, auth (refreshing
        tokens included) and errors (``ApiException`` with the status).

        The client library's typed API classes and models cost about half a second to import and set up on
        first use (hundreds of validated methods and model classes) — half of a session's start. mirror-py needs
        a handful of requests, and reads the API's own JSON."""
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        method, url, headers, body, _post = self.api_client.param_serialize(
            method, path, query_params=list(query.items()) or None, header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(method, url, headers, body, _request_timeout=self.request_timeout)
        data = response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=data.decode("utf-8", "replace"), data=None)
        try:
            return json.loads(data) if data else {}
        except ValueError:
            kind = response.headers.get("content-type") or "no content type"
            raise MirrorError(f"{self.configuration.host} answered {method} {path} with something that is not JSON "
                              f"({kind}); is the kubeconfig's server a Kubernetes API server?") from None


def load(kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None,
         request_timeout: float = 30.0) -> KubeContext:
    """``--kubeconfig`` or ``KUBECONFIG`` (several files joined by ':'), else ~/.kube/config, else in-cluster;
    the namespace is ``-n``, else the context's, else ``default``.

    Whatever is wrong with the configuration ends here as one MirrorError: the client library raises YAML
    errors, TypeErrors for a wrongly shaped file, and only logs a failing exec credential plugin."""
    from kubernetes import config

    path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    files = [p for p in path.split(os.pathsep) if p]
    existing = [p for p in files if os.path.exists(p)]
    if not existing:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            cfg = _configuration()
            try:
                config.load_incluster_config(client_configuration=cfg)
            except Exception as exc:
                raise MirrorError(f"no kubeconfig found at {path}, and the in-cluster configuration cannot be used "
                                  f"({_problem(exc)}); pass --kubeconfig or set KUBECONFIG") from None
            ns = namespace or _incluster_namespace()
            return KubeContext(_api_client(cfg, None), cfg, ns, "in-cluster", request_timeout)
        raise MirrorError(
            f"no kubeconfig found at {path}; pass --kubeconfig or set KUBECONFIG (or use a local target: pid/PID)"
        )
    from .kubeconfig import KubeconfigError, merge

    try:
        merged = merge(existing)
    except KubeconfigError as exc:
        raise MirrorError(f"cannot read kubeconfig {exc.path}: {_problem(exc.cause)}") from None
    contexts = merged.contexts()
    names = [c["name"] for c in contexts]
    chosen = context or merged.current_context
    if chosen not in names:
        known = ", ".join(map(str, names)) or "none"
        what = f"context {chosen!r} is not in" if chosen else "no current context in"
        raise MirrorError(f"{what} kubeconfig {merged.where()} (contexts: {known}); pass --context NAME")
    ctx = next(c for c in contexts if c["name"] == chosen)
    source = merged.origin[("contexts", chosen)]
    cfg = _configuration()
    with _logged_errors() as logged:
        try:
            # persist_config=False: a refreshed token is kept in memory, never written back into a merged file
            config.load_kube_config_from_dict(merged.config, context=chosen, client_configuration=cfg,
                                              persist_config=False)
        except Exception as exc:
            raise MirrorError(f"cannot use context {chosen!r} of {source}: {_problem(exc)}") from None
    if logged:  # the library logs a failing exec credential plugin and goes on without credentials
        raise MirrorError(f"cannot use context {chosen!r} of {source}: its exec credential plugin failed "
                          f"({logged[-1]})")
    if not cfg.verify_ssl:
        _quiet_insecure_warnings()
    ns = namespace or (ctx.get("context") or {}).get("namespace") or "default"
    return KubeContext(_api_client(cfg, _proxy_url(merged.config, ctx)), cfg, ns, chosen, request_timeout)


def _proxy_url(config: dict, ctx: dict) -> str | None:
    """The ``proxy-url`` of the context's cluster, if the kubeconfig sets one."""
    name = (ctx.get("context") or {}).get("cluster")
    cluster = next((c.get("cluster") for c in config["clusters"] if c.get("name") == name), None) or {}
    value = cluster.get("proxy-url")
    return str(value) if value else None


def _api_client(cfg: Any, proxy_url: str | None) -> Any:
    """The REST client, on the road mirror_py/kube/proxy.py chooses (the exec stream takes the same one).

    The client library is kept from choosing a proxy itself: depending on its version it reads the environment
    without NO_PROXY, or not at all, and a SOCKS proxy needs a package of its own."""
    from kubernetes import client

    from . import proxy

    chosen = proxy.choose(str(cfg.host), proxy_url, getattr(cfg, "proxy_headers", None))
    cfg.proxy = None
    cfg.no_proxy = None
    api_client = client.ApiClient(cfg)
    proxy.install(api_client, chosen)
    return api_client


def _configuration() -> Any:
    """A client Configuration whose credential files never stay on disk: the library sets them at load and sets
    them again from its token-refresh hook before requests, and each time a written file becomes a memory file."""
    from kubernetes import client

    class Configuration(client.Configuration):
        def __setattr__(self, name: str, value: Any) -> None:
            if name in _CREDENTIAL_FILES:
                value = _in_memory(value)
            super().__setattr__(name, value)

    cfg = Configuration()
    _no_read_retries(cfg)
    return cfg


def _problem(exc: BaseException) -> str:
    """A configuration error in words: YAML's own problem and place, the library's message, or, for a file of
    the wrong shape, that it is malformed."""
    import yaml
    from kubernetes.config.config_exception import ConfigException

    if isinstance(exc, yaml.MarkedYAMLError):
        where = f" at line {exc.problem_mark.line + 1}" if exc.problem_mark is not None else ""
        return f"it is not valid YAML ({exc.problem}{where})"
    if isinstance(exc, yaml.YAMLError):
        return f"it is not valid YAML ({exc})"
    if isinstance(exc, (ConfigException, OSError, ValueError)):
        return str(exc)
    return f"it is malformed ({type(exc).__name__}: {exc}); 'kubectl config view' shows what is wrong"


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


@contextlib.contextmanager
def _logged_errors() -> Iterator[list[str]]:
    """Collects what the client library logs at ERROR on the root logger while loading, instead of printing it
    as ``ERROR:root:`` noise."""
    messages: list[str] = []
    root = logging.getLogger()
    handler = _Collect(messages)
    root.addHandler(handler)
    try:
        yield messages
    finally:
        root.removeHandler(handler)


_moved: dict[str, str] = {}  # a file the client library wrote -> the memory file now standing for it
_memory_files: list[int] = []  # their descriptors: open for the process's life, like the paths
_CREDENTIAL_FILES = ("key_file", "cert_file", "ssl_ca_cert")


def _in_memory(path: Any) -> Any:
    """The client library writes a kubeconfig's ``client-key-data`` (and certificate data) to files in the temp
    directory, removed only at a clean exit: a signal or a crash leaves the user's private key in /tmp. Such a
    file is moved at once into an anonymous memory file, reached as ``/proc/self/fd/N`` (TLS loads it by path on
    every new connection, so the descriptor stays open), and removed from the disk. Other paths (files the
    user's kubeconfig names) are left as they are."""
    if not isinstance(path, str) or not path:
        return path
    if path in _moved:
        return _moved[path]
    from kubernetes.config import kube_config

    if path not in getattr(kube_config, "_temp_files", {}).values() or not hasattr(os, "memfd_create"):
        return path
    try:
        with open(path, "rb") as f:
            content = f.read()
        fd = os.memfd_create("mirror-py-credential", os.MFD_CLOEXEC)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        return path  # keep the library's file: working beats failing
    _memory_files.append(fd)
    _moved[path] = f"/proc/self/fd/{fd}"
    try:
        os.remove(path)
    except OSError:
        pass
    return _moved[path]


def _quiet_insecure_warnings() -> None:
    """The kubeconfig itself asked for no TLS verification (insecure-skip-tls-verify); kubectl does not warn on
    every request, and neither does mirror-py."""
    import urllib3

    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)


def _no_read_retries(cfg: Any) -> None:
    """A refused connection is retried (an API server restarting), an unanswered request is not: the request
    timeout is then the longest a request waits, not four times it."""
    from urllib3.util.retry import Retry

    cfg.retries = Retry(total=3, read=0, status=0, raise_on_status=False)


def _incluster_namespace() -> str:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def explain(exc: BaseException, doing: str) -> MirrorError:
    """An API failure as one line: the Kubernetes reason and message, as kubectl shows them."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(exc, ApiException):
        message = exc.reason or ""
        try:
            body = json.loads(exc.body or "{}")
            message = body.get("message") or message
        except (ValueError, TypeError):
            pass
        if exc.status == 401:
            return MirrorError(f"{doing}: the API server rejected the credentials (401 Unauthorized): {message}")
        if exc.status == 403:
            return MirrorError(f"{doing}: forbidden: {message}")
        return MirrorError(f"{doing}: {message} ({exc.status})")
    if isinstance(exc, (HTTPError, OSError)):
        if _timed_out(exc):
            return MirrorError(f"{doing}: cannot reach the Kubernetes API server: it did not answer within the "
                               "request timeout (timed out); check the server, proxy or VPN, or raise "
                               "--request-timeout (target.request_timeout)")
        return MirrorError(f"{doing}: cannot reach the Kubernetes API server: {_short(exc)}")
    return MirrorError(f"{doing}: {exc}")


def _timed_out(exc: BaseException) -> bool:
    from urllib3.exceptions import MaxRetryError, NewConnectionError, TimeoutError

    if isinstance(exc, MaxRetryError):
        exc = exc.reason or exc
    # NewConnectionError is a TimeoutError subclass in urllib3, but it means refused or unreachable.
    return isinstance(exc, (TimeoutError, socket.timeout)) and not isinstance(exc, NewConnectionError)


def _short(exc: BaseException) -> str:
    text = str(exc)
    reason = getattr(exc, "reason", None)
    if reason is not None:
        text = str(reason)
    return text if len(text) < 300 else text[:300] + "..."
