"""mirror-py over a bad network: 50 ms each way and 1% packet loss each way between the laptop and the cluster.

The laptop is a network namespace whose only way out is such a link (tests/sandbox/badlink.py: what
``tc netem delay 50ms loss 1%`` does, made in userspace because this kernel has no sch_netem). mirror-py runs
inside it against the sandbox cluster's API server on the bridge address, so the Kubernetes API calls and the
exec websocket carrying every tunneled byte cross the bad link, as they cross the internet or a VPN for a real
user. The core scenarios must all still pass: DNS, HTTP through requests, Redis through redis-py, TLS with a
body large enough to need retransmissions, and UDP. UDP is lossy by nature, so its probe retries like any
UDP client must (DNS over UDP does the same inside the resolver); everything over TCP gets no retry at all.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import trustme
import yaml

from tests.sandbox.badlink import BadLink
from tests.sandbox.cluster import Cluster

from .conftest import MIRROR_PY, ROOT

DELAY, LOSS = 0.05, 0.01
BODY_SIZE = 512 * 1024

SERVERS = """
---
apiVersion: v1
kind: Secret
metadata: {name: secure-tls, namespace: staging}
type: Opaque
stringData:
  tls.pem: |
{pem}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: secure, namespace: staging}
spec:
  replicas: 1
  selector: {matchLabels: {app: secure}}
  template:
    metadata: {labels: {app: secure}}
    spec:
      containers:
        - name: tls
          image: python:3.12-slim
          command: [python3, {servers}, tls, --pod, secure, --bind, "0.0.0.0:8443", --cert, /etc/tls/tls.pem]
          ports: [{name: https, containerPort: 8443}]
          readinessProbe: {tcpSocket: {port: https}}
          volumeMounts: [{name: tls, mountPath: /etc/tls, readOnly: true}]
      volumes: [{name: tls, secret: {secretName: secure-tls}}]
---
apiVersion: v1
kind: Service
metadata: {name: secure, namespace: staging}
spec:
  selector: {app: secure}
  ports: [{name: https, port: 8443, targetPort: 8443}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: udp-echo, namespace: staging}
spec:
  replicas: 1
  selector: {matchLabels: {app: udp-echo}}
  template:
    metadata: {labels: {app: udp-echo}}
    spec:
      containers:
        - name: echo
          image: python:3.12-slim
          command: [python3, {servers}, udp-echo, --bind, "0.0.0.0:9999"]
---
apiVersion: v1
kind: Service
metadata: {name: udp-echo, namespace: staging}
spec:
  selector: {app: udp-echo}
  ports: [{name: udp, port: 9999, targetPort: 9999, protocol: UDP}]
"""

APP = r"""
import hashlib, json, os, socket, time
import redis, requests

out = {}
out["dns"] = {name: sorted({i[4][0] for i in socket.getaddrinfo(name, 80, socket.AF_INET)})
              for name in ("redis", "secure.staging.svc.cluster.local", "udp-echo")}

with requests.Session() as http:  # keep-alive: many requests on one tunneled connection
    answers = [http.get("http://api:8000/app.yaml", timeout=60) for _ in range(10)]
out["http"] = sorted({(r.status_code, r.text.splitlines()[0]) for r in answers})

r = redis.Redis(host="redis", port=6379, socket_timeout=60, socket_connect_timeout=60)
r.delete("badnet")
pipe = r.pipeline()
for _ in range(500):
    pipe.incr("badnet")
pipe.execute()
out["redis"] = [r.ping(), int(r.get("badnet"))]

body = os.urandom(int(os.environ["BODY_SIZE"]))
answer = requests.post("https://secure:8443/upload", data=body, verify=os.environ["CA_FILE"], timeout=120).json()
out["tls"] = [answer["server"], answer["body_length"], answer["body_sha256"] == hashlib.sha256(body).hexdigest()]

u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(2)
answers, attempts = [], 0
for i in range(5):
    want = b"echo:ping-%d" % i
    for attempt in range(10):  # a datagram or its answer may be lost: send again, as a UDP client must
        attempts += 1
        u.sendto(want[5:], ("udp-echo", 9999))
        try:
            while True:
                got = u.recvfrom(100)[0]
                if got == want:  # a late answer to an earlier try is not this one's
                    break
        except socket.timeout:
            continue
        answers.append(got.decode())
        break
out["udp"] = {"answers": answers, "attempts": attempts}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the sandbox cluster builds namespaces and must run as root")
    ca = trustme.CA()
    tmp = tmp_path_factory.mktemp("badnet")
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    pem = ca.issue_cert("secure", "secure.staging.svc.cluster.local").private_key_and_cert_chain_pem.bytes()
    servers = json.dumps(str(ROOT / "tests" / "sandbox" / "servers.py"))
    manifest = (ROOT / "examples" / "k8s" / "sandbox.yaml").read_text() + SERVERS.replace(
        "{pem}", "\n".join("    " + line for line in pem.decode().splitlines())).replace("{servers}", servers)
    with Cluster.start(manifest) as c:
        c.test_ca_file = str(tmp / "ca.pem")
        yield c


def _kubeconfig_over_the_bridge(cluster: Cluster, path: Path) -> str:
    """The cluster's kubeconfig with the server at the bridge address: reachable from the laptop namespace
    only across the bad link (the API server's certificate names that address too)."""
    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    for entry in config["clusters"]:
        entry["cluster"]["server"] = f"https://{cluster.network.gateway}:{cluster.apiserver.port}"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return str(path)


@pytest.mark.parametrize("mode", ["exec", "targetless"])
def test_core_scenarios_over_a_slow_lossy_link(cluster, tmp_path, mode):
    kubeconfig = _kubeconfig_over_the_bridge(cluster, tmp_path / "kubeconfig")
    env = dict(os.environ, PYTHONPATH=str(ROOT), KUBECONFIG=kubeconfig, CA_FILE=cluster.test_ca_file,
               BODY_SIZE=str(BODY_SIZE))
    target = ["--target", "deploy/api", "--agent-mode", "exec"] if mode == "exec" else []
    # A fixed seed: the 27th and 49th packets through the link are lost, so every run really loses packets
    # (with chance alone, a short run could lose none and prove nothing); later losses stay random at 1%.
    with BadLink(delay=DELAY, loss=LOSS, seed=5) as link:
        out = link.run([*MIRROR_PY, "exec", *target, "--agent-startup-timeout", "60", "--", sys.executable, "-c",
                        APP], capture_output=True, text=True, timeout=240, env=env, cwd=str(ROOT))
        sent, dropped = dict(link.sent), dict(link.dropped)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    ip = {name: [cluster.pod(cluster.pod_names("staging", name + "-")[0], "staging").ip]
          for name in ("redis", "secure", "udp-echo")}
    assert result["dns"] == {"redis": ip["redis"], "secure.staging.svc.cluster.local": ip["secure"],
                             "udp-echo": ip["udp-echo"]}
    assert result["http"] == [[200, "greeting: hello from staging"]]
    assert result["redis"] == [True, 500]
    assert result["tls"] == ["tls", BODY_SIZE, True]
    assert result["udp"]["answers"] == [f"echo:ping-{i}" for i in range(5)]
    # The link really was bad: the upload alone is hundreds of packets, so some were lost on the way.
    assert sent["out"] > BODY_SIZE // 1500 and sum(dropped.values()) > 0, (sent, dropped)
