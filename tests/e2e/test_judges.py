"""Judged by other projects' test suites: a client library's own released tests, run natively in a pod and
through mirror-py from the host, give every test the same outcome.

Each suite and side gets its own pod, built from one spec (same hostname, environment and servers), so all
runs go at once and none sees what another left in its server. The servers live on the pods' loopback:
Debian's redis-server (started with every sandbox pod) and a PostgreSQL started here. The suites find them
as their own CI would: redis-py's ``--redis-url``, asyncpg's ``PGHOST``/``PGPORT``/``PGUSER`` in the pod's
environment (which mirror-py brings over, so that is judged too).

Selection rule: whole test files, listed below; a test is left out only when it cannot run to the same end on
either side for reasons that have nothing to do with mirror-py, with the reason next to it. Tests that fail in
both places (no cluster, no Redis modules, a server too old for a command) stay in: they must fail the same way,
with the same first line of why (numbers and addresses aside).

How to add a judge: docs/testing.md.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.sandbox.netpod import Network, Pod, PodSpec

from .judges import (
    Outcome,
    Suite,
    differences,
    outcomes,
    run_sides,
    suite_tree,
    summary,
    tail,
)

# The versions pinned in setup.cfg's test extras: the sdist's tests must match the installed library.
REDIS = "8.1.0"
ASYNCPG = "0.32.0"

REDIS_URL = ("--redis-url=redis://localhost:6379/0",)

SUITES = (
    # Sync client: every command against a real server (hundreds of tests), connection set-up, and socket
    # state checks (half-closed peers, pending data) on real TCP connections. test_connect's test_tcp_connect
    # and test_connection's half-close tests start a server of their own on 127.0.0.1 and connect to it:
    # they judge that the app's own listeners stay local. test_commands' test_psync, test_module and
    # test_module_loadex connect where nothing listens (a replica, a Redis with modules) in both places: they
    # judge that a refused connect says the kernel's words, which redis-py puts in its own error.
    Suite(
        name="redis-py",
        dist="redis",
        version=REDIS,
        select=("tests/test_commands.py", "tests/test_connect.py", "tests/test_connection.py"),
        args=REDIS_URL,
    ),
    # asyncio client: the same commands on single connections and pools, plus cancellation in flight
    # (test_cwe_404 puts a delaying proxy of its own, on 127.0.0.1, between client and server; its shortest
    # delay only: the longer ones add 10 s and nothing else).
    Suite(
        name="redis-py-asyncio",
        dist="redis",
        version=REDIS,
        select=(
            "tests/test_asyncio/test_commands.py",
            "tests/test_asyncio/test_connect.py",
            "tests/test_asyncio/test_cwe_404.py::test_standalone[0.05]",
            "tests/test_asyncio/test_cwe_404.py::test_standalone_pipeline[0.05]",
        ),
        args=REDIS_URL,
    ),
    # asyncio driver for PostgreSQL on its own protocol implementation: queries, COPY, cursors, pools,
    # cancellation and timeouts, LISTEN/NOTIFY, every type codec.
    Suite(
        name="asyncpg",
        dist="asyncpg",
        version=ASYNCPG,
        select=("tests",),
        postgres=True,
        deselect={
            # Not left out for a reason outside mirror-py: a difference through mirror-py that shows only
            # some of the time, so it can neither be held to agree nor be an xfail(strict). The test writes
            # 128 rows of 32 KB after a row the server rejects and expects the server's error to reach the
            # client before it has written them all (8 runs of 8 pass in the pod). Through mirror-py the relay
            # takes the writes without making the client wait, and the error comes back over more hops, so
            # the client has usually written everything first (7 of 8 fail with "128 not less than 128 :
            # should stop early"). A server across a real network would do the same.
            "tests/test_execute.py::TestExecuteMany::test_executemany_server_failure_during_writes":
                "through mirror-py the server's error arrives after the client has written everything",
            # Fails in the pod itself about half of the time (and through mirror-py as often): with
            # max_queries=1 the pool closes each connection after one query, and asyncpg sometimes leaves a
            # "connection_lost()" future unretrieved, which its own tearDown turns into a failure.
            "tests/test_pool.py::TestPool::test_pool_config_persistence": "flaky in the pod itself",
        },
    ),
)

POD_ENV = {
    "HOME": "/root",
    "PGHOST": "127.0.0.1",
    "PGPORT": "5432",
    "PGUSER": "postgres",
    "PGDATABASE": "postgres",
}
SIDES = ("native", "mirror")


class StillDiffers(AssertionError):
    """A known difference is still there (the only failure a known-difference case may expect)."""


# ------------------------------------------------------------------------------------------------ pods


def _postgres_bin() -> Path | None:
    """The newest PostgreSQL server the machine has (Debian puts each major version in its own directory)."""
    found = []
    for bindir in Path("/usr/lib/postgresql").glob("*/bin"):
        if (bindir / "postgres").exists() and bindir.parent.name.isdigit():
            found.append((int(bindir.parent.name), bindir))
    return max(found)[1] if found else None


def _start_postgres(pod: Pod, bindir: Path) -> None:
    """A throw-away PostgreSQL on the pod's loopback (as the unprivileged postgres user: it refuses root)."""
    user = pwd.getpwnam("postgres")
    home = pod.workdir / "postgres"
    home.mkdir()
    os.chown(home, user.pw_uid, user.pw_gid)
    data = home / "data"
    as_postgres = ["runuser", "-u", "postgres", "--"]
    pod.exec_output([*as_postgres, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                     "--no-sync"], timeout=120)
    with open(pod.log_path("postgres"), "wb") as log:
        server = pod.run([*as_postgres, str(bindir / "postgres"), "-D", str(data), "-c", "listen_addresses=127.0.0.1",
                          "-c", f"unix_socket_directories={home}", "-c", "fsync=off", "-c", "max_connections=200"],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    # pg_isready answers at once (refused while the server starts): ask until it accepts or dies.
    deadline = time.monotonic() + 60
    while pod.run([str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", "5432"]).wait() != 0:
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL did not start in pod {pod.name}: {tail(pod.log_path('postgres'))}")
        time.sleep(0.1)


def _pod(network: Network, name: str, postgres: Path | None) -> Pod:
    pod = network.add_pod(PodSpec(name=name, hostname="judge", env=POD_ENV, servers=True))
    if postgres:
        _start_postgres(pod, postgres)
    return pod


def _host_env() -> dict[str, str]:
    """What the host side starts with: a plain shell's environment, not this pytest's (no PYTEST_*)."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    return {key: os.environ[key] for key in keep if key in os.environ}


def _start(side: str, pod: Pod, suite: Suite, tree: Path, work: Path) -> subprocess.Popen:
    """Starts the suite on one side; it writes ``work/<side>/report.xml`` and its output to ``work/<side>.log``."""
    (work / side).mkdir()
    argv = suite.argv(work / side)
    with open(work / f"{side}.log", "wb") as log:
        if side == "native":
            return pod.run(argv, cwd=str(tree), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        return subprocess.Popen(
            [sys.executable, "-m", "mirror_py", "exec", "--target", f"pid/{pod.pid}", "--", *argv],
            cwd=str(tree), env=_host_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )


Verdict = tuple[dict[str, Outcome], dict[str, Outcome]]


@pytest.fixture(scope="module")
def verdicts(network: Network, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Verdict | str]:
    """Every suite on both sides, all at once: each suite-side pair in its own pod from one spec, so no run
    sees another's keys, clients or settings. A suite's entry is its outcomes on each side, or why it has none
    (the test then fails or skips with that)."""
    postgres = _postgres_bin()
    result: dict[str, Verdict | str] = {}
    runs: list[tuple[Suite, Path, list[tuple[str, subprocess.Popen]]]] = []
    for number, suite in enumerate(SUITES):
        if suite.postgres and postgres is None:
            result[suite.name] = "skip: PostgreSQL is not installed (apt-get install postgresql, as .ci/run does)"
            continue
        try:
            tree = suite_tree(suite)
        except RuntimeError as exc:
            result[suite.name] = str(exc)
            continue
        work = tmp_path_factory.mktemp(suite.name)
        pods = {side: _pod(network, f"judge{number}-{side}", postgres if suite.postgres else None) for side in SIDES}
        runs.append((suite, work, [(side, _start(side, pods[side], suite, tree, work)) for side in SIDES]))
    for suite, work, started in runs:
        run_sides(started)
        found = []
        for side in SIDES:
            report = work / side / "report.xml"
            if not report.exists():
                found = f"{suite.name} ({side}) wrote no report; its output ends:\n{tail(work / f'{side}.log')}"
                break
            found.append(outcomes(report, work / side))
        result[suite.name] = found if isinstance(found, str) else (found[0], found[1])
    return result


def _verdict(verdicts: dict[str, Verdict | str], suite: Suite) -> Verdict:
    found = verdicts[suite.name]
    if isinstance(found, str):
        if found.startswith("skip: "):
            pytest.skip(found[len("skip: "):])
        pytest.fail(found, pytrace=False)
    return found


# ------------------------------------------------------------------------------------------------ verdicts


@pytest.mark.parametrize("suite", SUITES, ids=[s.name for s in SUITES])
def test_suite_gives_the_same_outcomes_in_the_pod_and_through_mirror_py(
    suite: Suite, verdicts: dict[str, Verdict | str]
) -> None:
    native, through = _verdict(verdicts, suite)
    # A judge that ran nothing, or could not reach its server, would agree with anything.
    passed = sum(o.kind == "passed" for o in native.values())
    assert passed >= 100, f"{suite.name} in the pod: {summary(native)}"
    diffs = [d for d in differences(native, through) if d.test_id not in suite.known]
    report = "\n".join(map(str, diffs))
    assert not diffs, (
        f"{len(diffs)} of {len(native)} {suite.name} tests end differently (or for other words) through mirror-py "
        f"(in the pod: {summary(native)}; through mirror-py: {summary(through)}):\n{report}"
    )


KNOWN = [
    pytest.param(suite, test_id, marks=pytest.mark.xfail(strict=True, raises=StillDiffers, reason=reason),
                 id=f"{suite.name}:{test_id}")
    for suite in SUITES
    for test_id, reason in suite.known.items()
]

if KNOWN:  # defined only with entries: an empty parametrization would be a skipped test that says nothing

    @pytest.mark.parametrize(("suite", "test_id"), KNOWN)
    def test_known_difference(suite: Suite, test_id: str, verdicts: dict[str, Verdict | str]) -> None:
        """Each known difference, on its own: expected to fail until mirror-py is fixed, then it passes and
        (strict) fails the run, which says to take the entry out of ``known``."""
        native, through = _verdict(verdicts, suite)
        assert test_id in native and test_id in through, f"{test_id} is no longer in the {suite.name} suite"
        if not native[test_id].same_as(through[test_id]):
            raise StillDiffers(f"in the pod: {native[test_id]}; through mirror-py: {through[test_id]}")
