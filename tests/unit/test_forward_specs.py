"""Forward specs of ``mirror-py port-forward``: what users write for ssh and kubectl, and one line for the rest."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mirror_py.forward.specs import Forward, SpecError, parse


@pytest.mark.parametrize(("spec", "expected"), [
    ("15432:postgres:5432", Forward("127.0.0.1", 15432, "postgres", 5432)),
    (":redis:6379", Forward("127.0.0.1", 0, "redis", 6379)),
    ("0.0.0.0:8080:api.staging.svc.cluster.local:80", Forward("0.0.0.0", 8080, "api.staging.svc.cluster.local", 80)),
    ("[::1]:8080:[fd00::7]:80", Forward("::1", 8080, "fd00::7", 80)),
])
def test_accepted(spec, expected):
    assert parse(spec, "127.0.0.1") == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("5432", "expected [BIND:]PORT:HOST:HOSTPORT"),
    ("a:b:c:d:e", "expected [BIND:]PORT:HOST:HOSTPORT"),
    ("x:postgres:5432", "port 'x' is not a port number"),
    ("70000:postgres:5432", "port 70000 is out of range"),
    ("1:postgres:0", "port of the destination 0 is out of range (1 to 65535)"),
    ("1::5432", "no host to forward to"),
    ("1:[::1:5432", "'[' without ']'"),
])
def test_refused_with_the_reason(spec, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        parse(spec, "127.0.0.1")


def test_the_command_says_it_in_one_line():
    out = subprocess.run([sys.executable, "-m", "mirror_py", "port-forward", "--target", "deploy/x", "5432"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr == ("mirror-py: error: '5432': expected [BIND:]PORT:HOST:HOSTPORT, like 15432:postgres:5432\n")
