"""``python -m tests.sandbox up --manifest FILE --kubeconfig PATH [--v4-only]``: a sandbox cluster by hand.

For demos and debugging: the quickstart points mirror-py at the kubeconfig this writes, exactly as at a
real cluster.  It runs until SIGINT/SIGTERM and then removes everything it made; leftovers of an earlier
run that was SIGKILLed are removed first.  ``cleanup`` removes leftovers only.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from types import FrameType

from tests.sandbox.cluster import Cluster, cleanup_leftovers


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.sandbox", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a sandbox cluster and keep it running until interrupted")
    up.add_argument("--manifest", required=True, help="Kubernetes YAML (several documents) to apply")
    up.add_argument("--kubeconfig", required=True, help="where to write the kubeconfig (removed on exit)")
    up.add_argument("--v4-only", action="store_true", help="serve exec without v5.channel.k8s.io (older clusters)")
    up.add_argument("--no-ephemeral", action="store_true", help="answer ephemeral containers with 404")
    up.add_argument("--namespace", help="the kubeconfig contexts' namespace (default: the manifest's first)")
    sub.add_parser("cleanup", help="remove leftovers of sandbox runs that were killed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if os.geteuid() != 0:
        print("the sandbox builds network and mount namespaces: run it as root", file=sys.stderr)
        return 2
    if args.command == "cleanup":
        removed = cleanup_leftovers()
        print(f"removed {len(removed)} leftover(s)" + (f": {', '.join(removed)}" if removed else ""))
        return 0

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    # Installed before starting so an interrupt during start-up still cleans up (via the finally below).
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cluster = None
    try:
        cluster = Cluster.start(
            args.manifest,
            args.kubeconfig,
            v4_only=args.v4_only,
            ephemeral_containers=not args.no_ephemeral,
            namespace=args.namespace,
        )
        if stop.is_set():
            return 130
        print(f"sandbox cluster up: {cluster.base_url}  (kubeconfig {cluster.kubeconfig})")
        print(f"  namespace {cluster.namespace}; contexts: {', '.join([*cluster.contexts.values(), 'sandbox-cert'])}")
        for obj in cluster.store.list("pods"):
            meta, status = obj["metadata"], obj["status"]
            print(f"  pod {meta['namespace']}/{meta['name']}  {status.get('phase')}  {status.get('podIP', '')}")
        for svc in cluster.store.list("services"):
            meta = svc["metadata"]
            print(f"  service {meta['name']}.{meta['namespace']}.svc.cluster.local  {svc['spec'].get('clusterIP', '')}")
        print("press Ctrl-C to stop and clean up", flush=True)
        while not stop.wait(0.5):
            pass
        return 0
    finally:
        if cluster is not None:
            cluster.close()
            print("sandbox cluster removed", flush=True)


if __name__ == "__main__":
    sys.exit(main())
