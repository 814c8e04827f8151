"""Every test the documents name as evidence exists: a renamed or deleted test must not leave a claim behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DOCUMENTS = [ROOT / "RELIABILITY.md", ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REFERENCE = re.compile(r"`((?:tests|benchmarks)/[\w/.-]+\.py)(?:::(\w+))?")


def _references() -> list[tuple[str, str, str | None]]:
    found = []
    for doc in DOCUMENTS:
        for path, name in REFERENCE.findall(doc.read_text(encoding="utf-8")):
            found.append((doc.name, path, name or None))
    return found


def test_the_documents_name_tests():
    assert len(_references()) > 50


@pytest.mark.parametrize(("doc", "path", "name"), _references())
def test_a_named_test_exists(doc, path, name):
    source = ROOT / path
    assert source.is_file(), f"{doc} names {path}, which does not exist"
    if name:
        assert re.search(rf"^(?:async )?def {name}\b|^class {name}\b", source.read_text(encoding="utf-8"), re.M), \
            f"{doc} names {path}::{name}, which does not exist"
