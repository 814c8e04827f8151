"""The release suite: what a user runs against their own cluster before trusting a mirror-py release.

Every scenario sets its application up through the Kubernetes API alone (a fresh namespace holding
examples/k8s/sandbox.yaml and a UDP echo server, deleted at the end) and drives mirror-py as a user does, so the
same code runs against:

- ``sandbox``: the project's sandbox API server, started empty — in CI, so the suite itself is known to work;
- ``real``: the cluster of the kubeconfig in ``MIRROR_PY_E2E_KUBECONFIG`` (``scripts/release-check.sh`` runs only
  this one; docs/real-cluster.md says what the cluster needs);
- ``k3s``: k3s in a container, when a Docker daemon is reachable.

``MIRROR_PY_E2E_BACKENDS`` (comma-separated) picks among them; a backend that is not there is skipped with the
reason. Traffic that must come from inside the cluster (requests to the target's Service for the incoming
scenarios) comes from a second, targetless mirror-py session: no other client can reach a real cluster's
Services from the laptop, and it makes the suite use mirror-py the way its users do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .backends import Backend, KubeBackend, k3s_cluster, real_cluster
from .conftest import MIRROR_PY, ROOT, STEAL_IMAGE, terminate
from .test_incoming import _wait_ready
from .test_kube import APP, UDP_ECHO, _check_app

MANIFEST = (ROOT / "examples" / "k8s" / "sandbox.yaml").read_text() + UDP_ECHO
INCOMING_APP = str(Path(__file__).with_name("incoming_app.py"))
PORT = 8000  # the api Deployment's http.server
ALL_BACKENDS = ("sandbox", "real", "k3s")
# Pods that become Ready take longer on a real cluster (image pulls): every bound here is generous.
SESSION_TIMEOUT = 300


def _chosen_backends() -> list[str]:
    chosen = [b.strip() for b in os.environ.get("MIRROR_PY_E2E_BACKENDS", ",".join(ALL_BACKENDS)).split(",")]
    unknown = [b for b in chosen if b not in ALL_BACKENDS]
    if unknown:
        raise pytest.UsageError(f"MIRROR_PY_E2E_BACKENDS: unknown backend(s) {', '.join(unknown)}; "
                                f"choose among {', '.join(ALL_BACKENDS)}")
    return [b for b in chosen if b]


def _sandbox_backend() -> Iterator[Backend | str]:
    if os.geteuid() != 0:
        yield "the sandbox cluster builds network namespaces and must run as root"
        return
    from tests.sandbox.cluster import Cluster

    # Nothing but a namespace, like a new cluster: the suite creates its application through the API.
    with Cluster.start("apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n") as cluster:
        backend = KubeBackend("sandbox", cluster.kubeconfig, MANIFEST)
        try:
            yield backend
        finally:
            backend.close()


@pytest.fixture(scope="module", params=_chosen_backends())
def backend(request):
    if request.param == "sandbox":
        opened = _sandbox_backend()
        found = next(opened)
        if isinstance(found, str):
            pytest.skip(found)
        yield found
        opened.close()
        return
    opener = real_cluster if request.param == "real" else k3s_cluster
    with opener(MANIFEST) as found:
        if isinstance(found, str):
            pytest.skip(found)
        yield found


def _env(backend: Backend) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=backend.kubeconfig, E2E_NS=backend.namespace)
    env.pop("MIRROR_PY_SESSION", None)
    return env


def _run(backend: Backend, *args: str, app: str = APP) -> subprocess.CompletedProcess:
    return subprocess.run([*MIRROR_PY, "exec", *args, "--", sys.executable, "-c", app], capture_output=True,
                          text=True, timeout=SESSION_TIMEOUT, env=_env(backend), cwd=str(ROOT),
                          stdin=subprocess.DEVNULL)


def _serve(backend: Backend, tmp_path: Path, *flags: str) -> tuple[subprocess.Popen, Path]:
    """A local HTTP app on the api's port under ``mirror-py exec --target deploy/api``; the file it logs
    every request it gets to."""
    log = tmp_path / "seen.log"
    proc = subprocess.Popen([*MIRROR_PY, "exec", "--target", "deploy/api", *flags, "--", sys.executable,
                             INCOMING_APP, "http", str(PORT), str(log)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(backend), cwd=str(ROOT),
                            start_new_session=True, stdin=subprocess.DEVNULL)
    _wait_ready(proc, timeout=SESSION_TIMEOUT)
    return proc, log


# A client inside the cluster: a targetless session's app asks the api Service, each request with its headers.
CLIENT = (
    "import json, sys, urllib.request\n"
    "out = []\n"
    "for headers in json.loads(sys.argv[1]):\n"
    "    req = urllib.request.Request('http://api:8000/app.yaml', headers=headers)\n"
    "    with urllib.request.urlopen(req, timeout=30) as r:\n"
    "        out.append([r.status, r.read().decode(errors='replace')])\n"
    "print(json.dumps(out))\n"
)


def _stop(proc: subprocess.Popen) -> str:
    """SIGTERM to a serving session: it must end on its own (a SIGKILL would leave its agent to notice the
    silence, which the last scenario would then report as a leftover)."""
    err = terminate(proc)
    assert proc.returncode != -9, f"the session did not end within 30 s of SIGTERM: {err[-2000:]}"
    assert "Traceback" not in err, err
    return err


def _ask_the_service(backend: Backend, *headers: dict[str, str]) -> list[tuple[int, str]]:
    proc = subprocess.run([*MIRROR_PY, "exec", "--", sys.executable, "-c", CLIENT, json.dumps(list(headers))],
                          capture_output=True, text=True, timeout=SESSION_TIMEOUT, env=_env(backend),
                          cwd=str(ROOT), stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return [tuple(answer) for answer in json.loads(proc.stdout.strip().splitlines()[-1])]


def _from_the_pod(answer: tuple[int, str]) -> bool:
    return answer[0] == 200 and answer[1].startswith("greeting: hello from staging")


def _from_the_app(answer: tuple[int, str]) -> bool:
    return answer[0] == 200 and answer[1].startswith("{") and json.loads(answer[1])["server"] == "local"


def _seen(log: Path, count: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------------ scenarios


@pytest.mark.parametrize("mode", ["exec", "ephemeral", "job"])
def test_the_app_runs_in_the_pods_context_with_each_agent_mode(backend, mode):
    """Outgoing TCP and UDP, cluster DNS (short and full names), the pod's environment, its hostname, its
    loopback: the whole outgoing side, with each agent placement."""
    out = _run(backend, "--target", "deploy/api", "--agent-mode", mode)
    _check_app(out, backend)


def test_a_session_without_a_target_reaches_services_by_name(backend):
    app = ("import json, socket; s = socket.create_connection(('redis', 6379), timeout=10); "
           "s.sendall(b'PING\\r\\n'); print(json.dumps(s.recv(100).decode().strip()))")
    out = _run(backend, app=app)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == "+PONG"


def test_mirrored_requests_reach_the_app_while_the_pod_answers(backend, tmp_path):
    proc, log = _serve(backend, tmp_path, "--agent-mode", "ephemeral", "--incoming", "mirror")
    try:
        answers = _ask_the_service(backend, {"x-release-check": "1"}, {"x-release-check": "2"})
        assert all(_from_the_pod(a) for a in answers), answers
        seen = _seen(log, 2)
        assert sorted(entry["path"] for entry in seen) == ["/app.yaml", "/app.yaml"], seen
    finally:
        _stop(proc)


def _steal_image(backend: Backend) -> str | None:
    """An agent image with iptables (k8s/Dockerfile.agent): the sandbox knows one by name; a real cluster needs
    one pushed where it pulls from, named by MIRROR_PY_E2E_STEAL_IMAGE (the default python:3.12-slim has no
    iptables)."""
    return STEAL_IMAGE if backend.name == "sandbox" else os.environ.get("MIRROR_PY_E2E_STEAL_IMAGE") or None


def test_stealing_with_an_http_filter_takes_only_the_matching_requests(backend, tmp_path):
    config = tmp_path / "steal.toml"
    config.write_text('[network.incoming]\nmode = "steal"\n'
                      '[network.incoming.http_filter]\nheader = "^x-user: me$"\n')
    image = _steal_image(backend)
    if image is None:
        # Without an image that can steal, a steal session must fail at its start and say which image to use.
        out = subprocess.run([*MIRROR_PY, "exec", "--target", "deploy/api", "--agent-mode", "ephemeral", "--config",
                              str(config), "--", sys.executable, "-c", "print('the app ran')"], capture_output=True,
                             text=True, env=_env(backend), cwd=str(ROOT), timeout=SESSION_TIMEOUT)
        assert out.returncode != 0 and "the app ran" not in out.stdout, out.stdout + out.stderr
        assert "k8s/Dockerfile.agent" in out.stderr, out.stderr
        pytest.skip("stealing itself needs MIRROR_PY_E2E_STEAL_IMAGE: an image built from k8s/Dockerfile.agent "
                    "that the cluster can pull")
    proc, log = _serve(backend, tmp_path, "--agent-mode", "ephemeral", "--config", str(config), "--agent-image",
                       image)
    try:
        mine, other = _ask_the_service(backend, {"x-user": "me"}, {"x-user": "someone-else"})
        assert _from_the_app(mine), mine
        assert _from_the_pod(other), other
        assert len(_seen(log, 1)) == 1
    finally:
        _stop(proc)
    # The session is gone, and so are its rules: the pod answers every request again.
    mine, other = _ask_the_service(backend, {"x-user": "me"}, {"x-user": "someone-else"})
    assert _from_the_pod(mine) and _from_the_pod(other), (mine, other)


def test_nothing_is_left_running_in_the_cluster(backend):
    """Every session above has ended: no agent pod or Job of mirror-py is still there or still running
    (ephemeral containers stay in their pod's spec, as Kubernetes keeps them, but must have exited)."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=backend.kubeconfig)
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    deadline = time.monotonic() + 60
    while True:
        pods = core.list_namespaced_pod(backend.namespace).items
        leftovers = [p.metadata.name for p in pods
                     if p.metadata.name.startswith("mirror-py-") and not p.metadata.deletion_timestamp]
        leftovers += [j.metadata.name for j in batch.list_namespaced_job(backend.namespace).items
                      if j.metadata.name.startswith("mirror-py-")]
        running = [f"{p.metadata.name}/{s.name} (running since {s.state.running.started_at})" for p in pods
                   for s in (p.status.ephemeral_container_statuses or []) if s.state and s.state.running]
        if not leftovers and not running:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"left in the cluster after the sessions ended: {leftovers + running}")
        time.sleep(1)

