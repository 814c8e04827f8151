"""Starting the agent with nothing but ``python3`` in the target.

The command line carries only a short loader (:data:`BOOTSTRAP`). It reads a length-prefixed, compressed
bundle from stdin — the agent's modules and cbor2's pure-Python codec — imports them from memory and runs the
agent on the same stdin/stdout. Nothing is written to the target's disk, and the loader reads the bundle with
unbuffered ``os.read`` so that no protocol byte after it is swallowed.
"""

from __future__ import annotations

import functools
import os
import struct
import zlib

import cbor2

#: The oldest Python the agent runs on. The loader checks it first, in syntax every Python 3 parses, so a target
#: with an older ``python3`` fails with one clear line instead of a traceback from deep inside the agent.
MIN_PYTHON = (3, 9)

_VERSION_CHECK = (
    f"if sys.version_info<{MIN_PYTHON!r}:sys.exit('mirror-py agent: %s is Python %d.%d; the agent needs Python "
    f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer'%((sys.executable or 'python',)+tuple(sys.version_info[:2])))\n"
)

BOOTSTRAP = (
    "import os,sys,zlib\n"
    + _VERSION_CHECK +
    "def r(n):\n"
    " b=b''\n"
    " while len(b)<n:\n"
    "  c=os.read(0,n-len(b))\n"
    "  if not c:sys.exit('mirror-py agent: stdin closed during start-up')\n"
    "  b+=c\n"
    " return b\n"
    "exec(compile(zlib.decompress(r(int.from_bytes(r(4),'big'))),'<mirror-py-agent>','exec'))\n"
)

_LOADER = '''
import sys, importlib.abc, importlib.util
class _BundleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name in MODULES:
            return importlib.util.spec_from_loader(name, self, is_package=MODULES[name][0])
        return None
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        is_pkg, source = MODULES[module.__name__]
        if is_pkg:
            module.__path__ = []
        exec(compile(source, "<mirror-py-agent>/" + module.__name__.replace(".", "/") + ".py", "exec"),
             module.__dict__)
sys.meta_path.insert(0, _BundleFinder())
sys.modules["_cbor2"] = None  # the pure-Python codec behaves the same on every Python of the target
import mirror_py_agent.server
mirror_py_agent.server.main()
'''

_AGENT_MODULES = (
    "__init__", "addresses", "budget", "protocol", "relay", "dnswire", "addrsort", "resolver", "dns", "env",
    "dnsanswer", "files", "net", "containers", "placement", "server", "capture", "http1", "sweep", "iptables",
    "incoming", "listeners",
)
_CBOR2_MODULES = ("__init__", "_types", "_encoder", "_decoder", "encoder", "decoder", "types")


def _sources(package_dir: str, package: str, names: tuple[str, ...]) -> dict:
    out = {}
    for name in names:
        path = os.path.join(package_dir, name + ".py")
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            source = f.read()
        modname = package if name == "__init__" else f"{package}.{name}"
        out[modname] = (name == "__init__", source)
    return out


@functools.lru_cache(maxsize=1)
def bundle() -> bytes:
    """The bytes to write to the agent's stdin before the protocol starts."""
    modules = {}
    modules.update(_sources(os.path.dirname(os.path.abspath(__file__)), "mirror_py_agent", _AGENT_MODULES))
    modules.update(_sources(os.path.dirname(os.path.abspath(cbor2.__file__)), "cbor2", _CBOR2_MODULES))
    program = "MODULES = " + repr(modules) + "\n" + _LOADER
    packed = zlib.compress(program.encode("utf-8"), 6)
    return struct.pack(">I", len(packed)) + packed


def command(python: str = "python3") -> list[str]:
    """The argv that starts an agent, to run inside the target. ``-I``: the target's (or the session's)
    PYTHONPATH, user site and sitecustomize must not run code inside the agent."""
    return [python, "-I", "-c", BOOTSTRAP]
