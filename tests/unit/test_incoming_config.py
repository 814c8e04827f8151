"""The network.incoming configuration: its keys, its errors (key, value, reason), and what the shim and the
agent get of it."""

from __future__ import annotations

import pytest

from mirror_py.config import ConfigError, load_config, shim_settings
from mirror_py_agent import http1


# --------------------------------------------------------------------------------------------- the config
def _load(tmp_path, text: str):
    (tmp_path / "mirror-py.toml").write_text(text)
    return load_config(cwd=tmp_path)


def test_incoming_configuration_and_what_the_shim_gets(tmp_path):
    cfg = _load(tmp_path, '[network.incoming]\nmode = "steal"\nport_mapping = [[8081, 80]]\nignore_ports = [9229]\n'
                          '[network.incoming.http_filter]\nheader = "^x-user: me$"\nports = [80]\n'
                          'any_of = [{path = "^/api"}, {method = "^GET$"}]\n')
    inc = cfg.network.incoming
    assert inc.mode == "steal" and inc.http_filter.ports == [80]
    assert inc.http_filter.to_json() == {"header": "^x-user: me$", "any_of": [{"path": "^/api"}, {"method": "^GET$"}]}
    http1.HttpFilter(inc.http_filter.to_json())  # what the agent compiles
    assert shim_settings(cfg)["incoming"] == {"mode": "steal", "port_mapping": [[8081, 80]], "ignore_ports": [9229]}


@pytest.mark.parametrize("text,message", [
    ('[network.incoming]\nmode = "copy"', 'expected one of "mirror", "steal" or "off"'),
    ('[network.incoming]\nport_mapping = [[1, 2, 3]]', "each entry must be [local, remote], two ports"),
    ('[network.incoming]\nport_mapping = [[80, 70000]]', "a port must be 1..65535"),
    ('[network.incoming]\nport_mapping = [[80, 81], [80, 82]]', "local port 80 is mapped twice"),
    ('[network.incoming]\nignore_ports = [0]', "network.incoming.ignore_ports[0]: 0"),
    ('[network.incoming.http_filter]\nports = [80]', "a filter needs at least one of header, path, method"),
    ('[network.incoming.http_filter]\nheader = "("', "not a valid regular expression"),
    ('[network.incoming.http_filter]\nall_of = []', "all_of must not be an empty list"),
    ('[network.incoming.http_filter]\nany_of = [{ports = [1], path = "x"}]',
     "unknown key network.incoming.http_filter.any_of[0].ports"),
    ('[network.incoming.http_filter]\nheadr = "x"', "did you mean 'header'?"),
])
def test_incoming_configuration_errors_name_key_and_reason(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert message in str(info.value)


def test_incoming_flag(tmp_path):
    cfg = load_config(cwd=tmp_path, overrides={"network.incoming.mode": "off"})
    assert cfg.network.incoming.mode == "off"
