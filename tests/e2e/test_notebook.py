"""A real kernel executes examples/notebook: %mirror connect, a call into the pod, %%mirror_local, disconnect."""

from __future__ import annotations

import os

import nbformat
from nbclient import NotebookClient

from .conftest import ROOT


def _outputs(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")


def test_notebook_against_the_pod(pod, monkeypatch):
    monkeypatch.setenv("MIRROR_PY_TARGET", f"pid/{pod.pid}")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.delenv("POD_ONLY", raising=False)
    nb = nbformat.read(ROOT / "examples" / "notebook" / "against_the_pod.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    texts = [_outputs(c) for c in nb.cells if c.cell_type == "code"]
    assert texts[2].startswith(f"mirror-py: connected to pid/{pod.pid}")
    assert texts[3].split() == ["loopback", "api", "from-the-pod", "api-7d9f"]
    assert texts[4].strip() == "not known locally"
    status = texts[5].splitlines()  # %mirror status: what the kernel's session did so far
    assert status[:2] == [f"mirror-py: connected to pid/{pod.pid}", f"target pid/{pod.pid}"], texts[5]
    assert any("-> pod" in line and line.endswith("outgoing default: remote") for line in status), texts[5]
    assert texts[6].startswith("mirror-py: disconnected")
    assert texts[7].split() == ["restored", "True", "True"]
    assert os.environ.get("POD_ONLY") is None
