"""`mirror-py config check` and `config schema`."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from mirror_py.cli import main
from mirror_py.config import json_schema

ROOT = Path(__file__).resolve().parents[2]


def test_check_prints_values_with_their_sources_and_masks_overrides(tmp_path):
    cfg = tmp_path / "mirror-py.toml"
    cfg.write_text('[env]\noverride = { TOKEN = "abc" }\n[network.dns]\nfilter = { local = ["*.corp"] }\n')
    result = CliRunner().invoke(main, ["config", "check", str(cfg)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f'network.dns.filter.local = ["*.corp"]    # {cfg}' in lines
    assert 'agent.python = "python3"    # default' in lines
    assert any(line.startswith('env.override = {"TOKEN": "***"}') for line in lines)
    assert "abc" not in result.output
    shown = CliRunner().invoke(main, ["config", "check", str(cfg), "--show-secrets"])
    assert '"TOKEN": "abc"' in shown.output


def test_check_reports_a_bad_key_in_one_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[env]\noverid = 1\n")
    result = CliRunner().invoke(main, ["config", "check", str(cfg)])
    assert result.exit_code == 1
    assert "unknown key env.overid" in result.output and "did you mean 'override'" in result.output
    assert "Traceback" not in result.output


def test_committed_schema_is_current():
    committed = json.loads((ROOT / "mirror-py.schema.json").read_text())
    assert committed == json_schema(), "regenerate it: mirror-py config schema > mirror-py.schema.json"
    printed = CliRunner().invoke(main, ["config", "schema"])
    assert json.loads(printed.output) == committed
