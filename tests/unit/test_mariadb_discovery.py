"""The MariaDB pod's manifest (examples/service/mariadb.yaml) finds its server the way Debian's packages and the
mariadb images lay it out: its discovery run against fake trees, and the data directory a test can own."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.sandbox import mariadb


def _tree(tmp_path: Path, server: bool, install_db: bool) -> Path:
    """A fake ``usr`` with ``sbin/mariadbd`` and ``bin/mariadb-install-db`` as asked; its ``sbin``."""
    for wanted, rel in ((server, "sbin/mariadbd"), (install_db, "bin/mariadb-install-db")):
        path = tmp_path / "usr" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if wanted:
            path.write_text("#!/bin/sh\n")
            path.chmod(0o755)
    return tmp_path / "usr" / "sbin"


def test_the_server_beside_its_install_script_is_found(tmp_path):
    sbin = _tree(tmp_path, True, True)
    assert mariadb.server([tmp_path / "absent", sbin]) == sbin / "mariadbd"


@pytest.mark.parametrize(("server", "install_db"), [(False, True), (True, False), (False, False)])
def test_none_installed_is_a_clear_error(tmp_path, server, install_db):
    sbin = _tree(tmp_path, server, install_db)  # e.g. only the client packages installed
    with pytest.raises(mariadb.NoMariaDB) as err:
        mariadb.server([sbin])
    assert str(err.value) == (f"no MariaDB server (mariadbd beside bin/mariadb-install-db) in {sbin}: "
                              "install Debian's mariadb-server-core package")


def test_a_test_owns_the_data_directory():
    docs = [doc for doc in yaml.safe_load_all(mariadb.manifest("/srv/t")) if doc]
    (deploy,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert {"name": "TMPDIR", "value": "/srv/t"} in container["env"]
    assert "mktemp -d" in container["command"][-1]  # which honours TMPDIR
    assert {doc["kind"] for doc in docs} == {"Deployment", "Service"}
