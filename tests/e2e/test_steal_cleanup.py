"""Steal rules never outlive their agent, however the agent and its dead-man helper die, and the iptables lock
and chain ranks of one network namespace behave (real network namespaces and iptables; root).

The harness is an agent container in miniature: a network namespace with the target's server on port 8080,
a PID namespace whose PID 1 is the idle program of agent containers (when it exits, the kernel kills everything
left in the namespace, as a container runtime does), and an agent in it that steals the port."""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror_py.kube import placement
from mirror_py_agent import iptables

ROOT = Path(__file__).resolve().parents[2]
PORT = 8080
SERVER = (
    "import socket\n"
    "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('127.0.0.1',8080));s.listen()\n"
    "print('up',flush=True)\n"
    "while True:\n"
    " c,_=s.accept();c.sendall(b'target');c.close()\n"
)
AGENT = (
    "import socket,sys,time\n"
    "from mirror_py_agent import iptables\n"
    "ln=socket.socket();ln.bind(('127.0.0.1',0));ln.listen()\n"
    "rules=iptables.Rules();rules.add(8080,ln.getsockname()[1],None)\n"
    "print('stealing',flush=True)\n"
    "time.sleep(120)\n"
)
PROBE = (
    "import socket\n"
    "try:\n"
    " c=socket.create_connection(('127.0.0.1',8080),timeout=5);print(c.recv(100).decode() or 'closed')\n"
    "except OSError as e:\n"
    " print(type(e).__name__)\n"
)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("these tests build network namespaces and must run as root")
    name = f"mpy-steal-{os.getpid()}-{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    server = None
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        server = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-c", SERVER],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline() == "up\n"
        yield name
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", name], check=False)


def in_ns(ns: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=60, **kw)


def leftovers(ns: str) -> list[str]:
    out = []
    for binary in ("iptables", "ip6tables"):
        out += [line for line in in_ns(ns, [binary, "-t", "nat", "-S"]).stdout.splitlines() if "MIRRORPY" in line]
    return out


def answer(ns: str) -> str:
    return in_ns(ns, [sys.executable, "-c", PROBE]).stdout.strip()


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (OSError, NotADirectoryError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def one_container_life(ns: str, rnd: random.Random, idle_python: str = sys.executable,
                       idle_in_ns: bool = True) -> None:
    """Starts the idle program as PID 1 of a new PID namespace and an agent in it, kills the agent — or the
    agent and its helper together — at a random moment, and waits for the container to end."""
    token = "mirror-py-" + secrets.token_hex(6)
    idle_argv = ["unshare", "--pid", "--fork", "--mount-proc", idle_python, "-I", "-c", placement.IDLE, token,
                 "0.02", "3"]
    idle = subprocess.Popen(["ip", "netns", "exec", ns, *idle_argv] if idle_in_ns else idle_argv)
    try:
        inner = None
        for _ in range(500):
            inner = next((c for c in children(idle.pid) if token.encode() in cmdline(c)), None)
            if inner is not None:
                break
            time.sleep(0.01)
        assert inner is not None, "the idle program did not start"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        agent = subprocess.Popen(["nsenter", "-t", str(inner), "--pid", "--net=/run/netns/" + ns, "--",
                                  sys.executable, "-c", AGENT, token], env=env, stdout=subprocess.DEVNULL)
        while not children(agent.pid) and agent.poll() is None:
            time.sleep(0.001)
        time.sleep(rnd.uniform(0.0, 0.7))
        together = rnd.random() < 0.5
        for pid in children(agent.pid):  # the agent (nsenter's child)
            kill(pid, signal.SIGSTOP)  # frozen: forks no helper while we look for it
            victims = [pid, *children(pid)] if together else [pid]
            rnd.shuffle(victims)
            for victim in victims:
                kill(victim)
            kill(pid, signal.SIGCONT)
        # nsenter stops itself when it sees its child stop, which may come after a first SIGCONT: resume it
        # until it has seen its child end.
        deadline = time.monotonic() + 30
        while agent.poll() is None and time.monotonic() < deadline:
            kill(agent.pid, signal.SIGCONT)
            time.sleep(0.02)
        agent.wait(1)
        idle.wait(30)
    finally:
        idle.kill()
        idle.wait()


def test_no_rule_survives_the_agent_and_its_helper_killed_at_random_moments(netns):
    rnd = random.Random(int(os.environ.get("MIRROR_PY_TEST_SEED", "1")))
    for i in range(100):
        one_container_life(netns, rnd)
        left = leftovers(netns)
        assert left == [], f"iteration {i}: {left}"
        assert answer(netns) == "target", f"iteration {i}"


def _python312() -> str | None:
    found = sorted(Path("/root/.pyenv/versions").glob("3.1[2-9]*/bin/python"))
    return str(found[0]) if found else None


def test_an_idle_program_outside_the_namespace_sweeps_the_agents_namespace(netns):
    """Job pods: the idle program runs in the pod's own network namespace, the agent in the target's."""
    python = _python312()
    if python is None:
        pytest.fail("no Python 3.12+ found for the idle program (os.setns)")
    rnd = random.Random(2)
    for i in range(10):
        one_container_life(netns, rnd, idle_python=python, idle_in_ns=False)
        assert leftovers(netns) == [], f"iteration {i}"
        assert answer(netns) == "target"


# ------------------------------------------------------------------------------------- lock and ranks
RULES_SCRIPT = (
    "import sys,time\n"
    "from mirror_py_agent import iptables\n"
    "r=iptables.Rules();r.add(int(sys.argv[1]),1,None)\n"
    "print(r.rank,flush=True)\n"
    "sys.stdin.read()\n"
    "r.close()\n"
)


def start_agent(ns: str, port: int) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", RULES_SCRIPT, str(port)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip().isdigit(), proc.communicate()[1]
    return proc, int(line)


def stop_agent(proc: subprocess.Popen) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(30)


def test_ranks_are_reused_and_the_jumps_stay_in_rank_order(netns):
    a, rank_a = start_agent(netns, 1001)
    b, rank_b = start_agent(netns, 1002)
    c, rank_c = start_agent(netns, 1003)
    assert (rank_a, rank_b, rank_c) == (1, 2, 3)
    stop_agent(a)
    stop_agent(c)
    procs = []
    try:
        # Overlapping sessions: never more than MAX_RANK alive, far more over time.
        for n in range(2 * iptables.MAX_RANK):
            d, rank_d = start_agent(netns, 2000 + n)
            procs.append(d)
            assert rank_d == (1 if n % 2 == 0 else 3), n
            if n % 2:
                for p in procs:
                    stop_agent(p)
                procs = []
        d, rank_d = start_agent(netns, 3000)
        procs.append(d)
        assert rank_d == 1
        jumps = [line.split()[-1] for line in in_ns(netns, ["iptables", "-t", "nat", "-S", "PREROUTING"]).stdout
                 .splitlines() if "MIRRORPY" in line]
        assert [int(j.split("-")[1]) for j in jumps] == [1, 2], jumps
    finally:
        for p in [b, *procs]:
            stop_agent(p)
    assert leftovers(netns) == []


def test_a_process_in_the_target_cannot_hold_the_lock(netns):
    """Anyone in the namespace can bind an abstract socket name; only CAP_NET_ADMIN can create a chain."""
    squatter = subprocess.Popen(
        ["ip", "netns", "exec", netns, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-c",
         "import socket,time\n"
         "for n in (b'\\0mirror-py-iptables-lock',):\n"
         " s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM);s.bind(n)\n"
         "print('holding',flush=True);time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert squatter.stdout is not None and squatter.stdout.readline() == "holding\n"
        proc, rank = start_agent(netns, 1001)
        assert rank == 1
        stop_agent(proc)
    finally:
        squatter.kill()
        squatter.wait()


def test_a_lock_whose_holder_died_is_taken_over_and_a_live_one_ends_in_one_line(netns):
    holder = "0badc0de"  # no process binds this tag's marker: a holder that was killed
    in_ns(netns, ["iptables-restore", "-n"],
          input=f"*nat\n-N MIRRORPY-LOCK\n-A MIRRORPY-LOCK -m comment --comment {holder} -j RETURN\nCOMMIT\n")
    proc, rank = start_agent(netns, 1001)
    assert rank == 1
    stop_agent(proc)
    assert leftovers(netns) == []
    # A live holder that never lets go: the wait ends with one line naming it.
    script = (
        "import socket,sys\n"
        "from mirror_py_agent import iptables, sweep\n"
        "m=sweep.try_bind(sweep.marker_name('1234abcd'))\n"
        "sweep.restore('iptables','-N MIRRORPY-LOCK\\n'+sweep.lock_rule('1234abcd'))\n"
        "try:\n"
        " with iptables.netns_lock(['iptables'],timeout=0.5):\n"
        "  print('taken')\n"
        "except iptables.IptablesError as e:\n"
        " print(e)\n"
        "sweep.release_lock('iptables','1234abcd')\n"
    )
    out = in_ns(netns, [sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.stdout.strip().splitlines() == [
        "mirror-py agent 1234abcd held the iptables lock of this network namespace (chain MIRRORPY-LOCK in the "
        "nat table) for 0.5 s"], out
    assert leftovers(netns) == []


CONCURRENT = (
    "import asyncio,os,subprocess\n"
    "from mirror_py_agent import incoming\n"
    "class Mux:\n"
    " streams={}\n"
    "async def main():\n"
    " inc=incoming.Incoming(Mux())\n"
    " loop=asyncio.get_running_loop()\n"
    " async def steal(port):\n"
    "  rules=await inc.rules_for_steal()\n"
    "  await loop.run_in_executor(None,rules.add,port,1,None)\n"
    " await asyncio.gather(*(steal(p) for p in range(1000,1008)))\n"
    " kids=[e for e in os.listdir('/proc') if e.isdigit() and open('/proc/'+e+'/stat').read().rsplit(')',1)[1]"
    ".split()[1]==str(os.getpid())]\n"
    " listing=subprocess.run(['iptables','-t','nat','-S'],capture_output=True,text=True).stdout\n"
    " print(len(kids),sum(x.startswith('-N MIRRORPY-') and 'LOCK' not in x for x in listing.splitlines()),"
    "flush=True)\n"
    " await inc.close()\n"
    "asyncio.run(main())\n"
)


def test_concurrent_steal_subscriptions_share_one_chain_and_one_helper(netns):
    out = in_ns(netns, [sys.executable, "-c", CONCURRENT], env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"], out  # one dead-man helper, one chain
    assert leftovers(netns) == []


NOTHING_LAZY = (
    "import json,os,socket,subprocess,sys\n"
    "from mirror_py_agent import incoming, iptables\n"  # what the agent imports when it starts
    "imports=[];ran=[]\n"
    "class Spy:\n"
    " def find_spec(self,name,path=None,target=None):\n"
    "  imports.append(name)\n"
    "sys.meta_path.insert(0,Spy())\n"
    "popen=subprocess.Popen.__init__\n"
    "def spy(self,args,*a,**k):\n"
    " ran.append(os.path.basename(args[0]))\n"
    " popen(self,args,*a,**k)\n"
    "subprocess.Popen.__init__=spy\n"
    "incoming.clean_stale_rules()\n"
    "ln=socket.socket();ln.bind(('127.0.0.1',0));ln.listen()\n"
    "r=iptables.Rules();r.add(8080,ln.getsockname()[1],None);r.remove(8080);r.add(8080,ln.getsockname()[1],None)\n"
    "r.close()\n"
    "print(json.dumps({'imports':imports,'ran':sorted(set(ran))}))\n"
)


def test_stealing_imports_nothing_more_and_runs_nothing_but_iptables(netns):
    """The agent's files may be the target's (job mode enters its mount namespace): after start-up, stealing
    must neither import a module (a file of the target) nor run a program other than iptables (the dead-man
    helper is forked, not the target's python)."""
    out = in_ns(netns, [sys.executable, "-c", NOTHING_LAZY], env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["imports"] == []
    assert set(got["ran"]) <= {"iptables", "ip6tables", "iptables-restore", "ip6tables-restore"}, got["ran"]
    assert leftovers(netns) == []
