"""Executes against_the_pod.ipynb with a real kernel, against a sandbox pod, and prints each cell's output."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import nbformat  # noqa: E402
from nbclient import NotebookClient  # noqa: E402

from tests.sandbox.netpod import Network, PodSpec  # noqa: E402


def main() -> int:
    if os.geteuid() != 0:
        print("the sandbox builds network namespaces: run it as root", file=sys.stderr)
        return 1
    with Network.create() as net:
        pod = net.add_pod(PodSpec(name="api", env={"POD_ONLY": "from-the-pod"}, hostname="api-7d9f",
                                  hosts={"api.pod.internal": "127.0.0.1"}, servers=True))
        os.environ.update(MIRROR_PY_TARGET=f"pid/{pod.pid}", PYTHONPATH=str(ROOT))
        nb = nbformat.read(Path(__file__).with_name("against_the_pod.ipynb"), as_version=4)
        NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    for cell in nb.cells:
        if cell.cell_type == "code":
            print(">>> " + cell.source.replace("\n", "\n... "))
            print("".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
