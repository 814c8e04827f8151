"""The service example finds the newest installed PostgreSQL instead of pinning one version: its manifest's
discovery run against fake /usr/lib/postgresql trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sandbox import postgres


def _tree(tmp_path: Path, versions: dict[str, bool]) -> Path:
    """``versions`` maps a directory name to whether it holds an executable ``bin/postgres``."""
    root = tmp_path / "postgresql"
    root.mkdir()
    for name, has_server in versions.items():
        bin_dir = root / name / "bin"
        bin_dir.mkdir(parents=True)
        if has_server:
            (bin_dir / "postgres").write_text("#!/bin/sh\n")
            (bin_dir / "postgres").chmod(0o755)
    return root


def test_the_newest_of_15_and_17_is_taken(tmp_path):
    root = _tree(tmp_path, {"15": True, "17": True})
    assert postgres.server_bin(root) == root / "17" / "bin"
    assert postgres.major_version(root) == "17"


def test_versions_compare_as_numbers_not_as_text(tmp_path):
    root = _tree(tmp_path, {"9.6": True, "10": True})
    assert postgres.major_version(root) == "10"


def test_a_version_without_its_server_binary_is_skipped(tmp_path):
    root = _tree(tmp_path, {"15": True, "17": False})  # e.g. only postgresql-client-17 installed
    assert postgres.major_version(root) == "15"


@pytest.mark.parametrize("versions", [{}, {"17": False}])
def test_none_installed_is_a_clear_error(tmp_path, versions):
    root = _tree(tmp_path, versions)
    with pytest.raises(postgres.NoPostgres) as err:
        postgres.server_bin(root)
    assert str(err.value) == f"no PostgreSQL server in {root}/*/bin/postgres: install Debian's postgresql package"


def test_a_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(postgres.NoPostgres, match="install Debian's postgresql package"):
        postgres.server_bin(tmp_path / "absent")

