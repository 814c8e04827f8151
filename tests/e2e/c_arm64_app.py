"""What tests/e2e/test_c_layer_aarch64.py runs through mirror-py with the arm64 interpreter under qemu-user:
libcurl, loaded with ctypes, fetching a URL by a name only the pod knows.

``python3 c_arm64_app.py SCENARIO URL`` prints its result as a JSON line. Every scenario counts the names the C-level
``getaddrinfo`` hook handed to mirror-py's resolver (``hooked``): zero means C never entered Python.
"""

from __future__ import annotations

import atexit
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.append(ROOT)  # tests.ccurl; appended, so the shim's own mirror_py stays the one imported

entered: list[str] = []


def _count() -> None:
    """Counts the names C code's lookups hand to mirror-py's resolver (what cdns.getaddrinfo asks first)."""
    import socket  # noqa: F401 - the shim patches it on import, before its own modules are imported here

    from mirror_py.shim import dns

    remote_name = dns.remote_name

    def counting(host, *args):
        entered.append(str(host))
        return remote_name(host, *args)

    dns.remote_name = counting


def fetch_scenario(url: str) -> dict:
    import ctypes  # noqa: F401 - first: importing ctypes is what starts the layer, which imports elf and got

    from mirror_py.shim import elf, got
    from tests import ccurl

    out = ccurl.fetch(ccurl.load(), url)
    out.update(hooked=len(entered), machine=elf._machine(), gates=not got._state.direct,
               routed=sorted({os.path.basename(name) for _, name in got.patched_slots() if "libcurl" in name}))
    return out


def uninstall_scenario(url: str) -> dict:
    """What ``MirrorSession.close()`` does in the app: every slot written back as it was, and C calls libc."""
    import ctypes

    import mirror_py.shim
    from mirror_py.shim import got
    from tests import ccurl

    lib = ccurl.load()
    before = ccurl.fetch(lib, url)
    olds = {slot: old for slot, old, _, name, _ in got._state.patched if "libcurl" in name}
    mirror_py.shim.uninstall()
    restored = all(ctypes.c_uint64.from_address(slot).value == old for slot, old in olds.items())
    entered.clear()
    after = ccurl.fetch(lib, url)
    return {"before": before["code"], "slots": len(olds), "restored": restored,
            "left": len(got.patched_slots()), "after": {"code": after["code"], "hooked": len(entered)}}


def c_fork_scenario(url: str) -> dict:
    """fork() called from C: the child's gate is closed by the at-fork closer (machine code) and its lookups
    never enter Python; an os.fork() child stays interposed."""
    import ctypes

    from tests import ccurl

    lib = ccurl.load()
    parent = ccurl.fetch(lib, url)
    out: dict = {"parent": {"code": parent["code"], "hooked": len(entered)}}
    for kind in ("c", "os"):
        read, write = os.pipe()
        pid = ctypes.CDLL(None).fork() if kind == "c" else os.fork()
        if pid == 0:
            entered.clear()
            child = ccurl.fetch(lib, url)
            os.write(write, json.dumps({"code": child["code"], "body": child["body"], "error": child["error"],
                                        "hooked": len(entered)}).encode())
            os._exit(0)
        os.close(write)
        data = b""
        while chunk := os.read(read, 65536):
            data += chunk
        os.close(read)
        os.waitpid(pid, 0)
        out[kind] = json.loads(data)
    return out


def exit_scenario(url: str) -> dict:
    """At exit, after mirror-py's own exit handler: is the gate closed in the machine code? The handler below
    was registered before the layer started (before ctypes was imported), so it runs after the layer's. It
    clears the layer's Python-level "exiting" flag, so that only the gate's own test keeps C out of Python."""

    def after_layer_exit() -> None:
        from mirror_py.shim import got
        from tests import ccurl

        got._state.exiting = False
        entered.clear()
        result = ccurl.fetch(ccurl.load(), url)
        print(json.dumps({"code": result["code"], "error": result["error"], "hooked": len(entered)}), flush=True)

    atexit.register(after_layer_exit)
    from tests import ccurl  # imports ctypes: the layer starts, and registers its exit handler

    before = ccurl.fetch(ccurl.load(), url)
    return {"before": {"code": before["code"], "hooked": len(entered)}}


if __name__ == "__main__":
    _count()
    print(json.dumps(globals()[f"{sys.argv[1]}_scenario"](*sys.argv[2:])), flush=True)
