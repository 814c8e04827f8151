"""The README's setup scripts on a fresh Debian machine: the system packages they install (with apt-get and
dpkg-query replaced by recorders, so nothing is installed here) and the interpreter checks of setup.sh."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests import pythons

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PACKAGES = ROOT / "scripts" / "system-packages.sh"


def _fake_tools(tmp_path: Path, installed: set[str], uid: int = 0, unpacked: bool = True,
                sysroot: bool = True) -> tuple[dict, Path]:
    """A PATH whose dpkg-query knows ``installed``, whose apt-get, dpkg and qemu record their calls and whose id
    says ``uid``; the judges' packages and the arm64 sysroot already unpacked into a tools directory of the
    test's own, or not. apt-get's downloads are two empty .deb files in the cache it is given."""
    tools = tmp_path / "tools"
    for name, there in (("kubernetes-client", unpacked), ("arm64-sysroot", sysroot)):
        if there:
            (tools / name).mkdir(parents=True)
            (tools / name / ".unpacked").touch()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "apt-calls"
    known = " ".join(sorted(installed))
    scripts = {
        "dpkg-query": f'for pkg; do :; done\nfor k in {known}; do [ "$k" = "$pkg" ] && '
                      f'{{ echo "install ok installed"; exit 0; }}; done\necho "unknown ok not-installed"; exit 1\n',
        "apt-get": f'echo "$*" >> {calls}\nfor a; do case "$a" in Dir::Cache=*) cache="${{a#Dir::Cache=}}";; '
                   f'--download-only) get=1;; esac; done\n[ -n "$get" ] && touch "$cache/archives/libc6_1_arm64.deb" '
                   f'"$cache/archives/python3-minimal_1_arm64.deb"\nexit 0\n',
        "dpkg": f'echo "dpkg $*" >> {calls}\n',
        "qemu-aarch64-static": f'echo "qemu $*" >> {calls}\n',
        "id": f"echo {uid}\n",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin", MIRROR_PY_TOOLS=str(tools)), calls


def _run(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, cwd=str(ROOT))


def test_only_the_missing_packages_are_installed(tmp_path):
    env, calls = _fake_tools(tmp_path, {"iproute2", "util-linux", "mount", "iptables", "procps"})
    res = _run(["bash", str(SYSTEM_PACKAGES), "test"], env)
    assert res.returncode == 0, res.stderr
    assert calls.read_text().splitlines() == [
        "update -qq", "install -y -qq --no-install-recommends dnsmasq-base redis-server openssl postgresql "
        "postgresql-client redis-tools qemu-user-static mariadb-server-core mariadb-client-core"]


def test_build_prerequisites_of_the_test_extras(tmp_path):
    """setup.sh asks for these before pip builds mysqlclient, which has no Linux wheel, against libmariadb."""
    env, calls = _fake_tools(tmp_path, {"gcc"})
    res = _run(["bash", str(SYSTEM_PACKAGES), "build"], env)
    assert res.returncode == 0, res.stderr
    assert calls.read_text().splitlines() == [
        "update -qq", "install -y -qq --no-install-recommends libc6-dev pkgconf libmariadb-dev"]


def test_the_judges_are_unpacked_not_installed(tmp_path):
    """kubectl 1.20 (SPDY exec) is a judge of the sandbox, not a tool of the machine: downloaded and unpacked
    into the tests' own directory, never installed over whatever kubectl the machine has."""
    env, calls = _fake_tools(tmp_path, {"iproute2", "util-linux", "mount", "iptables", "procps", "dnsmasq-base",
                                        "redis-server", "openssl", "postgresql", "postgresql-client",
                                        "redis-tools", "qemu-user-static", "mariadb-server-core",
                                        "mariadb-client-core"}, unpacked=False)
    res = _run(["bash", str(SYSTEM_PACKAGES), "test"], env)
    assert res.returncode == 0, res.stderr
    lines = calls.read_text().splitlines()
    assert lines[0] == "download -qq kubernetes-client" and "install" not in " ".join(lines)
    assert lines[-1].startswith("dpkg -x ") and lines[-1].endswith(f"{tmp_path}/tools/kubernetes-client")
    assert (tmp_path / "tools" / "kubernetes-client" / ".unpacked").exists()


def test_the_arm64_sysroot_is_unpacked_with_apts_own_state_and_byte_compiled(tmp_path):
    """Debian's arm64 interpreter and libcurl for the aarch64 tests under qemu (tests/arm64.py): apt resolves
    their dependencies in a state of its own, so this machine's dpkg architectures and lists stay as they are."""
    env, calls = _fake_tools(tmp_path, {"iproute2", "util-linux", "mount", "iptables", "procps", "dnsmasq-base",
                                        "redis-server", "openssl", "postgresql", "postgresql-client",
                                        "redis-tools", "qemu-user-static", "mariadb-server-core",
                                        "mariadb-client-core"}, sysroot=False)
    res = _run(["bash", str(SYSTEM_PACKAGES), "test"], env)
    assert res.returncode == 0, res.stderr
    root = tmp_path / "tools" / "arm64-sysroot"
    update, install, *unpacks, compile_ = calls.read_text().splitlines()
    for line in (update, install):
        assert "-o APT::Architecture=arm64 -o APT::Architectures::=arm64" in line
        state = line.split("-o Dir::State=", 1)[1].split(" ", 1)[0]
        assert state.startswith("/tmp/") and f"-o Dir::State::status={state}/status" in line
    assert update.endswith(" update")
    assert install.endswith(" install -y --download-only --no-install-recommends python3-minimal "
                            "libpython3-stdlib libcurl4")
    assert unpacks == [f"dpkg -x {state}/cache/archives/{deb} {root}"
                       for deb in ("libc6_1_arm64.deb", "python3-minimal_1_arm64.deb")]
    assert compile_.startswith(f"qemu -cpu max,pauth-impdef=on -L {root} {root}/usr/bin/python3 -m compileall -q")
    assert os.readlink(root / "lib") == "usr/lib"  # a merged-/usr release: the loader's path resolves
    assert (root / ".unpacked").exists() and not Path(state).exists()


def test_no_arm64_packages_from_apt_is_said_in_one_line(tmp_path):
    env, calls = _fake_tools(tmp_path, {"iproute2", "util-linux", "mount", "iptables", "procps", "dnsmasq-base",
                                        "redis-server", "openssl", "postgresql", "postgresql-client",
                                        "redis-tools", "qemu-user-static", "mariadb-server-core",
                                        "mariadb-client-core"}, sysroot=False)
    (tmp_path / "bin" / "apt-get").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')  # downloads nothing
    res = _run(["bash", str(SYSTEM_PACKAGES), "test"], env)
    assert res.returncode == 1
    assert res.stderr.splitlines()[-1] == ("system-packages: apt downloaded no arm64 packages (do this machine's "
                                           "apt sources serve arm64?)")
    assert not (tmp_path / "tools" / "arm64-sysroot").exists()


def test_nothing_is_run_when_everything_is_there(tmp_path):
    env, calls = _fake_tools(tmp_path, {"iproute2", "util-linux", "mount", "iptables", "dnsmasq-base", "procps",
                                        "redis-server"})
    res = _run(["bash", str(SYSTEM_PACKAGES), "run"], env)
    assert (res.returncode, res.stderr, calls.exists()) == (0, "", False)


def test_without_root_it_names_what_is_missing(tmp_path):
    env, calls = _fake_tools(tmp_path, {"iproute2"}, uid=1000)
    res = _run(["bash", str(SYSTEM_PACKAGES), "iproute2", "python3.13-venv"], env)
    assert res.returncode == 1 and not calls.exists()
    assert res.stderr.splitlines() == [
        "system-packages: missing Debian packages: python3.13-venv; as root: apt-get install python3.13-venv"]


def test_setup_refuses_a_python_older_than_the_client_supports():
    old = pythons.find("3.9")
    if old is None:
        pytest.skip(pythons.missing_reason("3.9"))
    res = _run(["bash", "scripts/setup.sh"], dict(os.environ, PYTHON=old))
    assert res.returncode == 1
    assert res.stderr.splitlines() == [
        f"setup: {old} is Python 3.9; mirror-py needs 3.10 or newer: run with PYTHON=/path/to/python3.X "
        "(README: Python versions)"]


def test_setup_names_a_missing_interpreter():
    res = _run(["bash", "scripts/setup.sh"], dict(os.environ, PYTHON="/nonexistent/python3.12"))
    assert res.returncode == 1
    assert res.stderr.splitlines() == ["setup: /nonexistent/python3.12 not found; mirror-py needs Python 3.10 or newer"]
