"""The app the IDE tests debug (tests/e2e/test_ide.py): a handler that calls a service only the pod reaches and
reads a variable only the pod has; it prints the handler's answer as one JSON line.
"""

from __future__ import annotations

import json
import os
import urllib.request

SERVICE = "http://api.pod.internal:8081/ide"


def handler() -> dict:
    answer = json.loads(urllib.request.urlopen(SERVICE, timeout=10).read())
    pod_only = os.environ.get("POD_ONLY")
    return {"server": answer["server"], "pod_only": pod_only}  # the tests' breakpoint


if __name__ == "__main__":
    print(json.dumps(handler()), flush=True)
