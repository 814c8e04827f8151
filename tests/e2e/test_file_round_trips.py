"""Round trips of the file operations: an open + read of a small file is one request, a directory listing
with every entry's stat is one request, ``os.walk`` one request per directory, and the session's metadata
cache (``fs.metadata_cache``) answers a path asked again within its bound, never after it, and forgets what a
write through mirror-py touches.

Requests are counted by the session (the ``info`` RPC) before and after each step of the app, so the tests
do not depend on time, except where the cache's bound itself is the point. Every result is compared with the
same steps run inside the pod.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.sandbox.netpod import Network, Pod, PodSpec

from .conftest import config_args, run_mirror

APP = str(Path(__file__).with_name("file_round_trips_app.py"))
BIG = bytes(range(256)) * (5 << 12)  # 5 MiB: more than the open's first block
FILES = {
    "/srv/rt/small.txt": "hello from the pod\n",
    "/srv/rt/big.bin": BIG,
    "/srv/rt/many/.keep": "",
    **{f"/srv/rt/many/f{i:02}": "x" * i for i in range(12)},
    "/srv/rt/tree/a": "a",
    "/srv/rt/tree/s1/b": "b",
    "/srv/rt/tree/s1/s2/c": "c",
    "/srv/rt/tree/s3/d": "d",
    "/srv/rt/rw/keep.txt": "kept\n",
}


@pytest.fixture(scope="module")
def rt_pod(network: Network) -> Pod:
    pod = network.add_pod(PodSpec(name="fileroundtrips", files=FILES))
    pod.exec_output(["sh", "-c", "ln -s small.txt /srv/rt/many/link && ln -s nowhere /srv/rt/many/dangling"
                     " && mkdir /srv/rt/many/sub && chmod 777 /srv/rt/rw"])
    return pod




def _run(pod: Pod, *steps: str, extra: list[str] | None = None) -> dict:
    res = run_mirror(f"pid/{pod.pid}", [sys.executable, APP, *steps], extra=extra)
    assert res.code == 0, f"mirror-py exited {res.code}: {res.stderr}"
    return res.json


def _native(pod: Pod, *steps: str) -> list:
    out = pod.exec_output([sys.executable, APP, "--native", *steps])
    return json.loads(out.strip().splitlines()[-1])["results"]


def _deltas(out: dict) -> list[int]:
    """Requests sent to the agent during each step of the app."""
    asked = out["asked"]
    return [after - before for before, after in zip(asked, asked[1:])]


def test_open_and_read_of_a_small_file_is_one_request(rt_pod):
    steps = ("read:/srv/rt/small.txt", "read_text:/srv/rt/small.txt", "read:/srv/rt/many/f05")
    out = _run(rt_pod, *steps)
    assert out["results"] == _native(rt_pod, *steps)
    assert _deltas(out) == [1, 1, 1]


def test_a_large_file_reads_whole_and_seeks_exactly(rt_pod):
    steps = ("read:/srv/rt/big.bin", "read_seek:/srv/rt/big.bin:3000000", "read_seek:/srv/rt/small.txt:4")
    out = _run(rt_pod, *steps)
    assert out["results"] == _native(rt_pod, *steps)
    assert out["results"][0] == BIG.hex()


def test_scandir_with_each_entrys_stat_is_one_request(rt_pod):
    out = _run(rt_pod, "scandir:/srv/rt/many")
    assert out["results"] == _native(rt_pod, "scandir:/srv/rt/many")
    assert len(out["results"][0]) == 16
    assert _deltas(out) == [1]


def test_walk_is_one_request_per_directory(rt_pod):
    steps = ("walk:/srv/rt/tree", "walk_up:/srv/rt/tree")
    out = _run(rt_pod, *steps)
    assert out["results"] == _native(rt_pod, *steps)
    assert len(out["results"][0]) == 4
    assert _deltas(out) == [4, 4]


def test_a_stat_asked_again_within_the_bound_costs_no_request(rt_pod):
    out = _run(rt_pod, "stat:/srv/rt/small.txt", "stat:/srv/rt/small.txt", "exists:/srv/rt/small.txt",
               "lstat:/srv/rt/small.txt", "lstat:/srv/rt/small.txt")
    assert out["results"][0] == out["results"][1] == out["results"][3]
    assert _deltas(out) == [1, 0, 0, 1, 0]


def test_the_metadata_cache_can_be_turned_off(rt_pod, tmp_path):
    out = _run(rt_pod, "stat:/srv/rt/small.txt", "stat:/srv/rt/small.txt", "walk:/srv/rt/tree",
               extra=config_args(tmp_path, "fs", metadata_cache=0))
    assert _deltas(out) == [1, 1, 7]  # os.walk lstats each subdirectory it has listed: 4 listings + 3


def test_cached_metadata_never_outlives_its_bound(rt_pod, tmp_path):
    """The pod's own change (made behind mirror-py's back) is not seen within the bound, and is seen after."""
    path = "/srv/rt/rw/behind.txt"
    rt_pod.exec_output(["sh", "-c", f"printf 12345 > {path}"])
    out = _run(rt_pod, f"stat:{path}", f"behind:{rt_pod.pid}:{path}:678", f"stat:{path}", "sleep:2.2",
               f"stat:{path}", extra=config_args(tmp_path, "fs", metadata_cache=2))
    sizes = [r[1] if isinstance(r, list) else r for r in out["results"]]
    assert sizes == [5, None, 5, None, 8]
    assert _deltas(out) == [1, 0, 0, 0, 1]


def test_a_change_through_mirror_py_empties_the_cache(rt_pod, tmp_path):
    d = "/srv/rt/rw"
    steps = (f"scandir:{d}", f"stat:{d}/keep.txt", f"lstat:{d}/new.txt",
             f"append:{d}/keep.txt:more\n", f"stat:{d}/keep.txt",
             f"write:{d}/new.txt:new", f"lstat:{d}/new.txt",
             f"chmod:{d}/new.txt:600", f"stat:{d}/new.txt",
             f"rename:{d}/keep.txt:{d}/kept.txt", f"stat:{d}/keep.txt", f"stat:{d}/kept.txt",
             f"stat:{d}/kept.txt")
    out = _run(rt_pod, *steps, extra=config_args(tmp_path, "fs", mode="write"))
    res = out["results"]
    assert res[1][1] == 5 and res[4][1] == 10  # the append is seen at once
    assert res[2] == "FileNotFoundError 2" and res[6][1] == 3  # so is the new file
    assert res[8][0] & 0o777 == 0o600  # and its new mode
    assert res[10] == "FileNotFoundError 2" and res[11][1] == 10  # and the rename
    # Each stat after a change asks the agent again; a stat asked twice with no change between does not.
    assert _deltas(out)[1] == 0 and _deltas(out)[4] == 1 and _deltas(out)[6] == 1
    assert _deltas(out)[8] == 1 and _deltas(out)[10:] == [1, 1, 0]
