"""The session's name cache on its own: single-flight, what is kept and for how long, flushes. A fake clock
and a fake agent make every case deterministic; tests/e2e/test_dns_cache.py runs it with a real agent."""

from __future__ import annotations

import asyncio

import pytest

from mirror_py.session.agent_link import RemoteError
from mirror_py.session.dns_cache import MAX_ENTRIES, DnsCache

Q = {"fn": "getaddrinfo", "host": "api", "port": 80, "family": 2, "type": 1, "proto": 0, "flags": 0}


class Agent:
    """Counts questions; each answer waits for ``release`` when ``hold`` is set."""

    def __init__(self, answer: object = None, error: RemoteError | None = None, hold: bool = False) -> None:
        self.asked: list[dict] = []
        self.answer = answer if answer is not None else [[2, 1, 6, "", ["10.0.0.1", 80]]]
        self.error = error
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def __call__(self, args: dict) -> object:
        self.asked.append(args)
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.answer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(coro):
    return asyncio.run(coro)


def test_concurrent_lookups_share_one_request_even_when_nothing_is_kept():
    async def main():
        cache = DnsCache(ttl=0, negative_ttl=0)
        agent = Agent(hold=True)
        waiting = [asyncio.ensure_future(cache.lookup(dict(Q), agent)) for _ in range(10)]
        await asyncio.sleep(0)
        agent.release.set()
        answers = await asyncio.gather(*waiting)
        assert len(agent.asked) == 1 and all(a == agent.answer for a in answers)
        await cache.lookup(dict(Q), agent)  # ttl 0: the next one asks again
        assert len(agent.asked) == 2
        assert cache.stats["shared"] == 9

    run(main())


def test_a_caller_that_goes_away_does_not_cancel_the_others():
    async def main():
        cache = DnsCache()
        agent = Agent(hold=True)
        first = asyncio.ensure_future(cache.lookup(dict(Q), agent))
        second = asyncio.ensure_future(cache.lookup(dict(Q), agent))
        await asyncio.sleep(0)
        first.cancel()
        agent.release.set()
        assert await second == agent.answer
        assert len(agent.asked) == 1

    run(main())


def test_positive_answers_expire_after_the_ttl():
    async def main():
        clock = Clock()
        cache = DnsCache(ttl=5, negative_ttl=1, clock=clock)
        agent = Agent()
        await cache.lookup(dict(Q), agent)
        clock.now += 4.9
        await cache.lookup(dict(Q), agent)
        assert len(agent.asked) == 1
        clock.now += 0.2
        await cache.lookup(dict(Q), agent)
        assert len(agent.asked) == 2

    run(main())


def test_unknown_names_are_kept_for_the_negative_ttl_and_transient_errors_not_at_all():
    async def main():
        clock = Clock()
        cache = DnsCache(ttl=5, negative_ttl=1, clock=clock)
        agent = Agent(error=RemoteError("EAI_NONAME", "Name or service not known"))
        for _ in range(2):
            with pytest.raises(RemoteError) as info:
                await cache.lookup(dict(Q), agent)
            assert (info.value.name, info.value.message) == ("EAI_NONAME", "Name or service not known")
        assert len(agent.asked) == 1
        clock.now += 1.1
        with pytest.raises(RemoteError):
            await cache.lookup(dict(Q), agent)
        assert len(agent.asked) == 2

        again = Agent(error=RemoteError("EAI_AGAIN", "Temporary failure in name resolution"))
        for _ in range(2):
            with pytest.raises(RemoteError):
                await cache.lookup(dict(Q, host="flaky"), again)
        assert len(again.asked) == 2

    run(main())


def test_different_questions_do_not_share_answers():
    async def main():
        cache = DnsCache()
        agent = Agent()
        await cache.lookup(dict(Q), agent)
        await cache.lookup(dict(Q, family=10), agent)
        await cache.lookup(dict(Q, port=443), agent)
        await cache.lookup({"fn": "gethostbyname", "host": "api"}, agent)
        assert len(agent.asked) == 4

    run(main())


def test_a_flush_drops_what_is_kept_and_what_is_on_its_way():
    async def main():
        cache = DnsCache()
        agent = Agent()
        await cache.lookup(dict(Q), agent)
        cache.flush()
        await cache.lookup(dict(Q), agent)
        assert len(agent.asked) == 2
        # An answer read before a change of the resolver files may arrive after the flush: not kept.
        slow = Agent(hold=True)
        pending = asyncio.ensure_future(cache.lookup(dict(Q, host="slow"), slow))
        while not slow.asked:
            await asyncio.sleep(0)
        cache.flush()
        slow.release.set()
        await pending
        await cache.lookup(dict(Q, host="slow"), slow)
        assert len(slow.asked) == 2

    run(main())


def test_off_passes_every_lookup_through_and_gethostname_is_never_kept():
    async def main():
        off = DnsCache(enabled=False)
        agent = Agent()
        for _ in range(3):
            await off.lookup(dict(Q), agent)
        assert len(agent.asked) == 3
        on = DnsCache()
        names = Agent(answer="api-7d9f")
        for _ in range(2):
            await on.lookup({"fn": "gethostname"}, names)
        assert len(names.asked) == 2

    run(main())


def test_memory_stays_bounded():
    async def main():
        cache = DnsCache()
        agent = Agent()
        for i in range(MAX_ENTRIES + 10):
            await cache.lookup(dict(Q, host=f"h{i}"), agent)
        assert len(cache._entries) == MAX_ENTRIES
        await cache.lookup(dict(Q, host="h0"), agent)  # the oldest went first
        assert len(agent.asked) == MAX_ENTRIES + 11

    run(main())


# --- the agent's watch of the resolver files ---------------------------------------------------------------


def _watch_files(tmp_path, monkeypatch):
    from mirror_py_agent import dns

    hosts, resolv = tmp_path / "hosts", tmp_path / "resolv.conf"
    hosts.write_text("10.0.0.1 api\n")
    monkeypatch.setattr(dns, "RESOLVER_FILES", (str(hosts), str(resolv)))  # resolv.conf: missing at first
    return dns, hosts, resolv


def test_the_watch_answers_when_a_resolver_file_is_edited_in_place_or_appears(tmp_path, monkeypatch):
    dns, hosts, resolv = _watch_files(tmp_path, monkeypatch)

    async def main():
        watch = asyncio.ensure_future(dns.watch({"interval": 0.05}))
        await asyncio.sleep(0.12)
        assert not watch.done()
        with open(hosts, "r+") as f:  # in place, same size: the inode stays, the times move
            f.write("10.0.0.2 api\n")
        answer = await asyncio.wait_for(watch, 10)
        assert answer["changed"] is True and answer["stamp"][1] is None
        # From that stamp on, the next change is the file that appears.
        watch = asyncio.ensure_future(dns.watch({"interval": 0.05, "since": answer["stamp"]}))
        resolv.write_text("nameserver 10.96.0.10\n")
        again = await asyncio.wait_for(watch, 10)
        assert again["changed"] is True and again["stamp"][1] is not None

    asyncio.run(main())


def test_a_watch_without_changes_ends_after_its_limit(tmp_path, monkeypatch):
    dns, _, _ = _watch_files(tmp_path, monkeypatch)
    answer = asyncio.run(dns.watch({"interval": 0.05, "limit": 0.2}))
    assert answer == {"changed": False, "stamp": dns.resolver_stamp()}
