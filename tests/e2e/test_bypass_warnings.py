"""Traffic that goes around the patched socket surface is named on stderr, once, instead of leaving silently."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .conftest import run_mirror

APP = str(Path(__file__).with_name("bypass_app.py"))


@pytest.mark.parametrize(("mode", "names"), [
    ("gevent", "a connection to 127.0.0.1:8081 by gevent went out from this machine"),
    ("eventlet", "a connection to 127.0.0.1:8081 by eventlet went out from this machine"),
    ("raw", "a connection to 127.0.0.1:8081 by __main__ went out from this machine"),
    ("saved-reference", "a lookup of 'api.pod.internal' by __main__ went out from this machine"),
])
def test_a_bypass_is_named_once(pod, mode, names):
    res = run_mirror(f"pid/{pod.pid}", [sys.executable, APP, mode])
    assert res.code == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if "went out from this machine" in line]
    assert len(warnings) == 1, res.stderr
    assert names in warnings[0]


def test_the_patched_surface_raises_no_bypass_warning(pod):
    res = run_mirror(f"pid/{pod.pid}", [sys.executable, APP, "plain"])
    assert res.code == 0, res.stderr
    assert res.json["reply"].endswith(" 200"), res.json  # the pod's loopback server answered
    assert "went out from this machine" not in res.stderr
