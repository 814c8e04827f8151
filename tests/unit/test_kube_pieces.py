"""Kubernetes pieces that need no server: target syntax, container choice, the exec URL and status."""

from __future__ import annotations

import pytest

from mirror_py.errors import MirrorError
from mirror_py.kube import doctor, targets
from mirror_py.transport import k8s_exec


@pytest.mark.parametrize(
    ("text", "kind", "name", "container"),
    [
        ("deploy/api", "deployment", "api", None),
        ("deployment/api/container/app", "deployment", "api", "app"),
        ("pod/api-0", "pod", "api-0", None),
        ("sts/db", "statefulset", "db", None),
        ("rs/api-7d9f", "replicaset", "api-7d9f", None),
        ("ds/agent", "daemonset", "agent", None),
        ("job/migrate", "job", "migrate", None),
        ("svc/api", "service", "api", None),
    ],
)
def test_parse_targets(text, kind, name, container):
    assert targets.parse(text) == targets.TargetRef(kind, name, container)


@pytest.mark.parametrize(
    ("text", "message"),
    [("api", "KIND/NAME"), ("vm/x", "unknown target kind 'vm'"), ("deploy/api/sidecar/x", "/container/NAME"),
     ("deploy//x", "KIND/NAME")],
)
def test_bad_targets(text, message):
    with pytest.raises(MirrorError, match=message):
        targets.parse(text)


def _pod(names, annotations=None):
    return {"metadata": {"name": "api-1", "annotations": annotations or {}},
            "spec": {"containers": [{"name": n} for n in names]}}


def test_container_choice_order():
    assert targets.choose_container(_pod(["istio-proxy", "app"]), None) == (
        "app", "the first container that is not a known sidecar")
    annotated = _pod(["a", "b"], {targets.DEFAULT_CONTAINER_ANNOTATION: "b"})
    assert targets.choose_container(annotated, None)[0] == "b"
    assert targets.choose_container(_pod(["a", "b"]), "b") == ("b", "named")
    with pytest.raises(MirrorError, match="has no container 'c'; it has a, b"):
        targets.choose_container(_pod(["a", "b"]), "c")


def test_exec_url_keeps_prefix_and_repeats_command():
    url = k8s_exec.exec_url("https://k8s.example:6443/prefix/", "staging", "api-1", "app",
                            ["python3", "-c", "print('a b')"])
    assert url.startswith("wss://k8s.example:6443/prefix/api/v1/namespaces/staging/pods/api-1/exec?")
    query = url.split("?", 1)[1].split("&")
    assert query[:3] == ["command=python3", "command=-c", "command=print%28%27a%20b%27%29"]
    assert query[3:] == ["container=app", "stdin=true", "stdout=true", "stderr=true", "tty=false"]


def test_status_parsing():
    assert k8s_exec.parse_status(b'{"metadata":{},"status":"Success"}') == (0, None)
    failure = (b'{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: 3",'
               b'"reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}')
    assert k8s_exec.parse_status(failure) == (3, None)
    missing = (b'{"status":"Failure","reason":"InternalError","code":500,"message":"failed to exec: '
               b'exec: \\"python3\\": executable file not found in $PATH"}')
    code, message = k8s_exec.parse_status(missing)
    assert code == 127 and "executable file not found" in message


def test_rejections_say_what_to_do():
    text = k8s_exec.describe_rejection(403, b'{"message":"pods \\"api\\" is forbidden: User cannot create"}',
                                       "staging", "api")
    assert "needs get and create on pods/exec in namespace staging" in text
    assert "older than 1.30" in k8s_exec.describe_rejection(403, b"", "staging", "api")


def test_a_server_that_is_not_an_api_server_is_named_clearly(tmp_path):
    """A kubeconfig pointing at some other web server (a proxy's login page, a typo'd port) gets one clear line,
    not a JSON decoding error."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from mirror_py.kube import api as kube_api

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html><body>Please sign in</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = tmp_path / "config"
        config.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
            f"clusters: [{{name: k, cluster: {{server: 'http://127.0.0.1:{server.server_port}'}}}}]\n"
            "users: [{name: u, user: {token: t}}]\n"
            "contexts: [{name: c, context: {cluster: k, user: u, namespace: staging}}]\n"
        )
        kube = kube_api.load(str(config))
        with pytest.raises(MirrorError) as info:
            targets.resolve(kube, targets.parse("deploy/api"))
    finally:
        server.shutdown()
        server.server_close()
    assert str(info.value) == (
        f"http://127.0.0.1:{server.server_port} answered GET /apis/apps/v1/namespaces/staging/deployments/api with "
        "something that is not JSON (text/html); is the kubeconfig's server a Kubernetes API server?"
    )


@pytest.mark.parametrize(
    ("code", "out", "ok", "says"),
    [
        (0, "3.12.1\n", True, "pod/api has python3 3.12.1"),
        (0, "3.9.0\n", True, "pod/api has python3 3.9.0"),
        (0, "3.8.18\n", False, "pod/api has python3 3.8.18, older than the agent's Python 3.9"),
        (127, "", False, "pod/api has no usable python3"),
        (0, "garbage\n", False, "pod/api: python3 answered 'garbage', not a Python version"),
    ],
)
def test_doctor_judges_the_targets_python(code, out, ok, says):
    check = doctor.python_check("pod/api", "python3", code, out, None)
    assert (check.ok, check.what) == (ok, says)
    assert check.ok or "--agent-python" in check.fix
