"""Other projects' test suites as judges of mirror-py: one suite, run natively in a pod and through mirror-py,
must give every test the same outcome.

A suite here is a client library's own tests, taken from its released source distribution (the sdist on PyPI)
at the version installed in the venv, so the tests match the library they exercise. The tests talk to a
server that lives only in the pod (on its loopback), so through mirror-py every connection, lookup and timeout
in them goes the long way: shim, session, channel, agent. Nobody here wrote those tests, which is the point.

This module has one job: get a suite, run it on either side, and read what happened to each test.
The sides, the pods and the verdicts are in test_judges.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "tests" / ".judges"  # gitignored; pytest skips dot-directories when collecting
RUN_TIMEOUT = 300.0  # a whole suite run; per-test hangs are cut first by pytest-timeout
TEST_TIMEOUT = 60  # seconds per test (pytest-timeout), so one hang cannot eat the run

# What the released test trees need besides their tests: the project's pytest configuration (markers,
# asyncio mode, per-test timeouts) lives in one of these.
_CONFIG_FILES = ("pyproject.toml", "setup.cfg", "pytest.ini", "tox.ini")


@dataclass(frozen=True)
class Suite:
    """One judge: a library's released tests and how to point them at the pod's server.

    ``select`` is the explicit list of test files (or node ids) to run, ``deselect`` node ids left out, each
    with its reason in ``deselect_reasons``; ``args`` are the suite's own options (its server URL...).
    ``known`` maps test ids whose outcome is known to differ through mirror-py to why; they stay in the run.
    Test ids are junit-xml's ``classname::name`` (``tests.test_connect::test_tcp_connect``).
    """

    name: str
    dist: str
    version: str
    select: tuple[str, ...]
    args: tuple[str, ...] = ()
    deselect: Mapping[str, str] = field(default_factory=dict)
    known: Mapping[str, str] = field(default_factory=dict)
    postgres: bool = False  # the judge pods get a PostgreSQL too

    def argv(self, workdir: Path) -> list[str]:
        """The pytest command line, the same on both sides but for where it writes."""
        deselect = [f"--deselect={node}" for node in self.deselect]
        return [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rN", "--durations=15",
            "-o", f"timeout={TEST_TIMEOUT}", f"--junitxml={workdir / 'report.xml'}", f"--basetemp={workdir / 'tmp'}",
            *self.args, *deselect, *self.select,
        ]


@dataclass(frozen=True)
class Outcome:
    """What happened to one test: passed, failure, error, skipped or xfail, and the first line of why."""

    kind: str
    message: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}" if self.message else self.kind

    def same_as(self, other: Outcome) -> bool:
        """The same end for the same reason: a test that fails on both sides must fail with the same words
        (an app matches on them, and so do clients that put them in their own errors), not only the same
        kind. Numbers and object addresses are not compared: ports, timings and ids differ run to run."""
        return self.kind == other.kind and _WHY_NOISE.sub("N", self.message) == _WHY_NOISE.sub("N", other.message)


_WHY_NOISE = re.compile(r"0x[0-9a-fA-F]+|\d+")


# ------------------------------------------------------------------------------------------------ sources


def installed_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """Concurrent test processes (xdist workers, parallel runs) share the cache: one fills it at a time."""
    CACHE.mkdir(parents=True, exist_ok=True)
    fd = os.open(CACHE / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def suite_tree(suite: Suite) -> Path:
    """The suite's released tests and pytest configuration, unpacked once into the cache.

    Only ``tests/`` and the configuration are unpacked, never the library's own source: pytest puts the tree
    on ``sys.path``, and the tests must import the installed library, the one mirror-py runs with.
    Raises RuntimeError with one line when the sdist cannot be had or does not match the installed version.
    """
    have = installed_version(suite.dist)
    if have != suite.version:
        raise RuntimeError(f"{suite.dist} {have} is installed but the judge pins {suite.version}: run scripts/setup.sh")
    dest = CACHE / f"{suite.dist}-{suite.version}"
    with _cache_lock():
        if (dest / ".complete").exists():
            return dest
        downloads = CACHE / "sdists"
        sdist = _download(suite.dist, suite.version, downloads)
        shutil.rmtree(dest, ignore_errors=True)
        _unpack_tests(sdist, dest)
        (dest / ".complete").touch()
    return dest


def _download(dist: str, version: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    found = _find_sdist(dist, version, into)
    if found:
        return found
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
         "--dest", str(into), f"{dist}=={version}"],
        capture_output=True, text=True, timeout=300,
    )
    found = _find_sdist(dist, version, into)
    if proc.returncode != 0 or not found:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"pip download of the {dist}=={version} sdist failed: {last}")
    return found


def _find_sdist(dist: str, version: str, where: Path) -> Path | None:
    """The sdist of ``dist==version`` in ``where``; its file name may spell the project differently (PEP 625)."""
    for path in where.glob("*.tar.gz"):
        project, _, found_version = path.name[: -len(".tar.gz")].rpartition("-")
        if _normalise(project) == _normalise(dist) and found_version == version:
            return path
    return None


def _normalise(project: str) -> str:
    return re.sub(r"[-_.]+", "-", project).lower()


def _unpack_tests(sdist: Path, dest: Path) -> None:
    """Regular files under ``<top>/tests/`` plus the top-level configuration; nothing else, nothing outside."""
    dest.mkdir(parents=True)
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if len(parts) < 2 or not member.isfile() or ".." in parts or Path(member.name).is_absolute():
                continue
            rel = Path(*parts[1:])
            if rel.parts[0] != "tests" and str(rel) not in _CONFIG_FILES:
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            with source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
    if not (dest / "tests").is_dir():
        raise RuntimeError(f"{sdist.name} ships no tests/ directory")


# ------------------------------------------------------------------------------------------------ verdicts


def outcomes(junit: Path, workdir: Path) -> dict[str, Outcome]:
    """Each test id in a junit-xml report and its outcome; the side's own work directory (temporary files)
    reads ``<work>`` in messages, so the sides can be compared."""
    result: dict[str, Outcome] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        outcome = Outcome("passed")
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                kind = "xfail" if child.get("type") == "pytest.xfail" else child.tag
                message = (child.get("message") or "").strip().splitlines()
                why = message[0].replace(str(workdir), "<work>")[:300] if message else ""
                outcome = Outcome(kind, why)
                break
        result[test_id] = outcome
    return result


@dataclass(frozen=True)
class Difference:
    test_id: str
    native: Outcome | None
    through: Outcome | None

    def __str__(self) -> str:
        return f"{self.test_id}\n    in the pod:        {self.native}\n    through mirror-py: {self.through}"


def differences(native: Mapping[str, Outcome], through: Mapping[str, Outcome]) -> list[Difference]:
    """Tests that end differently on the two sides (a test missing on one side differs too)."""
    diffs = []
    for test_id in sorted(set(native) | set(through)):
        a, b = native.get(test_id), through.get(test_id)
        if a is None or b is None or not a.same_as(b):
            diffs.append(Difference(test_id, a, b))
    return diffs


def summary(found: Mapping[str, Outcome]) -> str:
    counts: dict[str, int] = {}
    for outcome in found.values():
        counts[outcome.kind] = counts.get(outcome.kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "<no output>"


def run_sides(start: Sequence[tuple[str, subprocess.Popen]], timeout: float = RUN_TIMEOUT) -> None:
    """Wait for the runs started on each side; kill a run's process group when it overstays."""
    for _side, proc in start:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, 9)
            proc.wait()
