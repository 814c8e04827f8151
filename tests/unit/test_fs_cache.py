"""The session's file metadata cache on its own, with a clock the test moves: an answer is served within its
bound and never after it, a change empties it, an answer asked before a change is not kept, and a new agent
starts from nothing."""

from __future__ import annotations

import asyncio
import os

from mirror_py.session import files as session_files
from mirror_py.session.fs_cache import MAX_ENTRIES, MetadataCache, changes

ST = [0o100644, 7, 1, 1, 0, 0, 5, 0, 0, 0, 4096, 8, 0]
ST2 = [0o100644, 7, 1, 1, 0, 0, 9, 0, 0, 0, 4096, 8, 0]
DIR = [0o40755, 3, 1, 2, 0, 0, 4096, 0, 0, 0, 4096, 8, 0]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_answer_is_kept_for_its_bound_and_not_a_moment_longer():
    clock = Clock()
    cache = MetadataCache(1.0, clock)
    cache.put("/a", True, ST, cache.generation())
    clock.now += 0.999
    assert cache.get("/a", True) == ST
    assert cache.get("/a", False) is None  # lstat and stat are different questions
    clock.now += 0.001
    assert cache.get("/a", True) is None


def test_zero_keeps_nothing():
    cache = MetadataCache(0.0, Clock())
    cache.put("/a", True, ST, cache.generation())
    assert not cache.enabled and cache.get("/a", True) is None


def test_an_answer_asked_before_a_change_is_not_kept():
    cache = MetadataCache(1.0, Clock())
    mark = cache.generation()
    cache.flush()  # a change was sent while the stat was in flight
    cache.put("/a", True, ST, mark)
    assert cache.get("/a", True) is None


def test_a_listing_keeps_each_entrys_lstat_and_followed_stat():
    cache = MetadataCache(1.0, Clock())
    listing = [["f", "f", ST, None, 7], ["d", "d", DIR, None, 3], ["l", "l", [0o120777] + ST[1:], ST2, 9],
               ["dangling", "l", [0o120777] + ST[1:], 2, 10], ["gone", "o", None, 2, 11]]
    cache.put_listing("/srv/", listing, cache.generation())
    assert cache.get("/srv/f", True) == ST and cache.get("/srv/f", False) == ST
    assert cache.get("/srv/d", False) == DIR
    assert cache.get("/srv/l", True) == ST2 and cache.get("/srv/l", False)[0] == 0o120777
    assert cache.get("/srv/dangling", True) is None  # an error is never kept
    assert cache.get("/srv/gone", False) is None


def test_memory_stays_bounded():
    cache = MetadataCache(1.0, Clock())
    for i in range(MAX_ENTRIES + 10):
        cache.put(f"/f{i}", True, ST, cache.generation())
    assert cache.get("/f0", True) is None and cache.get(f"/f{MAX_ENTRIES + 9}", True) == ST


def test_which_requests_change_the_target():
    assert not changes({"fn": "stat"}) and not changes({"fn": "scandir"}) and not changes({"fn": "read"})
    assert not changes({"fn": "open", "flags": os.O_RDONLY}) and not changes({"fn": "close"})
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_CREAT, os.O_RDONLY | os.O_TRUNC):
        assert changes({"fn": "open", "flags": flags})
    for fn in ("write", "ftruncate", "rename", "unlink", "chmod", "utime", "mkdir", "set_root", "unknown"):
        assert changes({"fn": fn})


class FakeLink:
    """Answers stat from a dict of sizes and counts what it was asked."""

    def __init__(self, sizes: dict) -> None:
        self.sizes = sizes
        self.asked: list[str] = []

    async def request(self, op: str, args: dict) -> object:
        self.asked.append(args["fn"])
        if args["fn"] == "stat":
            return ST[:6] + [self.sizes[args["path"]]] + ST[7:]
        if args["fn"] == "truncate":
            self.sizes[args["path"]] = args["length"]
        return None


def test_the_session_serves_a_stat_again_and_forgets_it_at_a_change():
    async def run() -> list:
        link = FakeLink({"/a": 5})
        cache = MetadataCache(60.0)
        sizes = []
        for req in ({"fn": "stat", "path": "/a"}, {"fn": "stat", "path": "/a"},
                    {"fn": "truncate", "path": "/a", "length": 2}, {"fn": "stat", "path": "/a"}):
            out = await session_files.handle(link, {"op": "fs", **req}, cache)  # type: ignore[arg-type]
            if req["fn"] == "stat":
                sizes.append(out[6])
        other = FakeLink({"/a": 1})  # a new agent: nothing of the old one's answers is served
        sizes.append((await session_files.handle(other, {"op": "fs", "fn": "stat", "path": "/a"}, cache))[6])
        return [sizes, link.asked, other.asked]

    assert asyncio.run(run()) == [[5, 5, 2, 1], ["stat", "truncate", "stat"], ["stat"]]
