"""mirror-py's block in an IDE's dotenv file (mirror_py/dotenv_block.py): merged into what is there, read back
the same by python-dotenv and by mirror-py's own reader, and taken out leaving every other byte as it was."""

from __future__ import annotations

import io
import os
import stat

import dotenv
import pytest

from mirror_py import dotenv_block
from mirror_py.config import parse_env_file

SESSION_ENV = {
    "PYTHONPATH": "/opt/site packages/sitecustomize_shim" + os.pathsep + "/from/the/starting/shell",
    "MIRROR_PY_SESSION": "/tmp/mirror-py-abc/session.sock",
    "MIRROR_PY_SHIM_LIB": "/opt/site packages",
    "MIRROR_PY_SHIM_SETTINGS": '{"fs": {"mode": "read"}}',
    "POD_ONLY": "from-the-pod",
    "SECRET_TOKEN": "s3cr3t",
}

USER_FILES = [
    "",
    "DEBUG=1\n",
    "DEBUG=1",  # no newline at the end
    "# mine\r\nDEBUG=1\r\nNAME='a b'\r\n",
    "A=1\n\n# comment\nB=\"x y\"\nexport C=3\nPYTHONPATH=src\n",
    "BYTES=\xe9t\xe9\n",
]


def _dotenv(text: str) -> dict:
    return dict(dotenv.dotenv_values(stream=io.StringIO(text)))


@pytest.mark.parametrize("original", USER_FILES)
def test_start_then_stop_gives_back_the_exact_bytes(tmp_path, original):
    path = tmp_path / ".env"
    raw = original.encode("latin-1") if "\xe9" in original else original.encode()
    path.write_bytes(raw)
    written = dotenv_block.write(str(path), SESSION_ENV)
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    assert text.startswith(raw.decode("utf-8", "surrogateescape").rstrip("\r\n"))
    assert dotenv_block.BEGIN[:20] in text and dotenv_block.END in text
    assert dotenv_block.held(str(path)) == written
    assert dotenv_block.remove(str(path)) == written
    assert path.read_bytes() == raw


@pytest.mark.parametrize("original", USER_FILES[:5])
def test_every_reader_reads_the_users_lines_and_the_session(tmp_path, original):
    path = tmp_path / ".env"
    path.write_text(original, newline="")
    dotenv_block.write(str(path), SESSION_ENV)
    text = path.read_bytes().decode()
    theirs = _dotenv(original)
    for values in (_dotenv(text), parse_env_file(text)):
        assert values["MIRROR_PY_SESSION"] == SESSION_ENV["MIRROR_PY_SESSION"]
        assert values["MIRROR_PY_SHIM_LIB"] == "/opt/site packages"
        assert values["MIRROR_PY_FETCH_ENV"] == "1"
        # The shim's directory first, then the PYTHONPATH of the user's own line (not the starting shell's).
        expected = "/opt/site packages/sitecustomize_shim"
        if theirs.get("PYTHONPATH"):
            expected += os.pathsep + theirs["PYTHONPATH"]
        assert values["PYTHONPATH"] == expected
        for name, value in theirs.items():
            if name != "PYTHONPATH":
                assert values[name] == value


def test_no_target_variable_and_no_secret_lands_in_the_file(tmp_path):
    path = tmp_path / ".env"
    dotenv_block.write(str(path), SESSION_ENV)
    text = path.read_text()
    assert "s3cr3t" not in text and "from-the-pod" not in text and "SHIM_SETTINGS" not in text
    assert set(_dotenv(text)) == set(dotenv_block.JOIN_VARIABLES)


def test_starting_again_leaves_one_block_after_the_users_lines(tmp_path):
    path = tmp_path / ".env"
    path.write_text("A=1\n")
    dotenv_block.write(str(path), SESSION_ENV)
    with path.open("a") as f:
        f.write("AFTER=2\nPYTHONPATH=src\n")  # the user adds lines after the block
    again = dict(SESSION_ENV, MIRROR_PY_SESSION="/tmp/mirror-py-def/session.sock")
    dotenv_block.write(str(path), again)
    dotenv_block.write(str(path), again)
    text = path.read_text()
    assert text.count(dotenv_block.END) == 1
    assert text.startswith("A=1\nAFTER=2\nPYTHONPATH=src\n" + dotenv_block.BEGIN)
    values = _dotenv(text)
    assert values["MIRROR_PY_SESSION"] == "/tmp/mirror-py-def/session.sock"
    assert values["PYTHONPATH"] == "/opt/site packages/sitecustomize_shim" + os.pathsep + "src"
    dotenv_block.remove(str(path))
    assert path.read_text() == "A=1\nAFTER=2\nPYTHONPATH=src\n"


def test_a_file_without_newline_at_its_end_restarted_and_stopped(tmp_path):
    path = tmp_path / ".env"
    path.write_bytes(b"A=1")
    dotenv_block.write(str(path), SESSION_ENV)
    dotenv_block.write(str(path), SESSION_ENV)
    assert _dotenv(path.read_text())["A"] == "1"
    dotenv_block.remove(str(path))
    assert path.read_bytes() == b"A=1"


def test_the_file_keeps_its_permissions_and_a_new_one_is_private(tmp_path):
    mine = tmp_path / "mine.env"
    mine.write_text("A=1\n")
    mine.chmod(0o640)
    dotenv_block.write(str(mine), SESSION_ENV)
    assert stat.S_IMODE(mine.stat().st_mode) == 0o640
    new = tmp_path / "new.env"
    dotenv_block.write(str(new), SESSION_ENV)
    assert stat.S_IMODE(new.stat().st_mode) == 0o600
    dotenv_block.remove(str(new))
    assert new.read_text() == ""


def test_removing_from_a_file_without_a_block_or_no_file_changes_nothing(tmp_path):
    path = tmp_path / ".env"
    assert dotenv_block.remove(str(path)) == {} and not path.exists()
    path.write_text("A=1\n")
    assert dotenv_block.remove(str(path)) == {}
    assert path.read_text() == "A=1\n"


@pytest.mark.parametrize("value, quoted", [
    ("/plain/path:x", "/plain/path:x"),
    ("/with space/x", "'/with space/x'"),
    ('{"json": "x y"}', "'{\"json\": \"x y\"}'"),
    ("a#b $HOME", "'a#b $HOME'"),
])
def test_values_quoted_so_readers_agree(value, quoted):
    assert dotenv_block.quote(value) == quoted
    line = f"X={quoted}\n"
    assert _dotenv(line)["X"] == value
    assert parse_env_file(line)["X"] == value


@pytest.mark.parametrize("value", ["it's", "back\\slash", "two\nlines", "${HOME}"])
def test_values_readers_disagree_on_are_refused(value):
    with pytest.raises(dotenv_block.DotenvError, match="every reader agrees"):
        dotenv_block.quote(value)


def test_a_block_edited_by_hand_is_reported_not_guessed(tmp_path):
    path = tmp_path / ".env"
    dotenv_block.write(str(path), SESSION_ENV)
    path.write_text(path.read_text().replace(dotenv_block.END, "# end"))
    with pytest.raises(dotenv_block.DotenvError, match="no end marker"):
        dotenv_block.remove(str(path))
