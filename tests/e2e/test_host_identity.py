"""The host's name is the pod's however the app spells the question, and the laptop's again after a session."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

from .conftest import ROOT

# platform.node() is asked before connect(): its cached answer (the laptop's) must not survive into the session.
SCRIPT = r"""
import json, os, platform, socket, sys
import mirror_py

before = platform.node()
with mirror_py.connect(sys.argv[1]):
    inside = [socket.gethostname(), os.uname().nodename, platform.node(), platform.uname().node]
after = [socket.gethostname(), os.uname().nodename, platform.node()]
print(json.dumps({"before": before, "inside": inside, "after": after}))
"""


def test_every_spelling_of_the_hostname_is_the_pods_inside_a_session(pod):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", SCRIPT, f"pid/{pod.pid}"], capture_output=True, text=True,
                         timeout=60, env=env, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    laptop = platform.node()
    assert laptop != "api-7d9f"
    assert result == {"before": laptop, "inside": ["api-7d9f"] * 4, "after": [laptop] * 3}
