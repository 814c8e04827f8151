"""The agent's memory budget, piece by piece (pure, no sockets): the reassembler's out-of-order bytes are bounded
in total, datagrams are dropped while the channel is paused, the session's hello sets the limit, and the
configuration takes sizes as people write them."""

from __future__ import annotations

import asyncio

import pytest

from mirror_py.config import ConfigError, load_config
from mirror_py_agent import capture, server
from mirror_py_agent import protocol as p
from mirror_py_agent.budget import DEFAULT_BUDGET, Budget
from mirror_py_agent.relay import Mux, TcpRelay, UdpRelay

KIB = 1024
SERVER = ("10.0.0.2", 8080)


def _open(reasm: capture.Reassembler, port: int, isn: int = 1000) -> tuple:
    """Starts a flow from client port ``port``; returns its client address."""
    src = ("10.0.0.1", port)
    reasm.feed(capture.segment(src, SERVER, isn, capture.SYN))
    reasm.feed(capture.segment(src, SERVER, isn + 1, capture.ACK))
    return src


def _ahead(reasm: capture.Reassembler, src: tuple, size: int, isn: int = 1000) -> list:
    """Bytes beyond a one-byte gap: held until the gap fills (which, from someone who only sends these, never
    happens)."""
    return reasm.feed(capture.segment(src, SERVER, isn + 2, capture.ACK, b"x" * size))


def test_out_of_order_bytes_of_every_flow_together_stay_within_the_budget():
    """Before the budget each flow could hold 4 MiB ahead of a gap, for up to 20,000 flows: 80 GB."""
    budget = Budget(256 * KIB)
    reasm = capture.Reassembler(budget=budget)
    closed = []
    for port in range(2000, 2200):  # 200 flows x 8 KiB = 1.6 MB ahead of their gaps
        src = _open(reasm, port)
        closed += [ev for ev in _ahead(reasm, src, 8 * KIB) if isinstance(ev, capture.Closed)]
        assert reasm.held <= budget.limit
        assert budget.held == reasm.held
    assert closed and all(ev.reset and "memory budget" in ev.reason for ev in closed)
    assert budget.counters["flows_cut"] == len(closed)
    assert len(reasm.flows) == 200 - len(closed)


def test_the_flows_holding_most_are_cut_first_then_the_segment_s_own():
    budget = Budget(100 * KIB)
    reasm = capture.Reassembler(budget=budget)
    big, small, new = _open(reasm, 3001), _open(reasm, 3002), _open(reasm, 3003)
    _ahead(reasm, big, 60 * KIB)
    _ahead(reasm, small, 10 * KIB)
    (cut,) = _ahead(reasm, new, 40 * KIB)  # 110 KiB would be held: the largest holder goes
    assert cut.key == capture.segment(big, SERVER, 0, 0).key and cut.reset
    assert reasm.held == 50 * KIB == budget.held
    # A segment that cannot fit even alone cuts its own flow, and the others keep theirs.
    lone = _open(reasm, 3004)
    events = _ahead(reasm, lone, 200 * KIB)
    assert [ev.key for ev in events] == [capture.segment(lone, SERVER, 0, 0).key]
    assert reasm.held == 50 * KIB


def test_held_bytes_go_back_to_the_budget_when_delivered_forgotten_or_expired():
    budget = Budget(1 << 20)
    reasm = capture.Reassembler(budget=budget, idle_timeout=5)
    a = _open(reasm, 4001)
    _ahead(reasm, a, 10 * KIB)
    assert budget.held == 10 * KIB
    events = reasm.feed(capture.segment(a, SERVER, 1001, capture.ACK, b"y"))  # the gap fills: all delivered
    assert b"".join(ev.data for ev in events if isinstance(ev, capture.Bytes)) == b"y" + b"x" * 10 * KIB
    assert budget.held == 0
    b, c = _open(reasm, 4002), _open(reasm, 4003)
    _ahead(reasm, b, KIB)
    _ahead(reasm, c, KIB)
    reasm.forget(capture.segment(b, SERVER, 0, 0).key)  # the copy ended
    assert budget.held == KIB
    reasm.expire(now=100.0)
    assert budget.held == 0 and reasm.flows == {}
    d = _open(reasm, 4004)
    _ahead(reasm, d, KIB)
    reasm.clear()
    assert budget.held == 0


def test_each_kind_of_loss_is_reported_once():
    said = []
    budget = Budget(8 << 20, notify=lambda kind, text: said.append((kind, text)))
    for _ in range(3):
        budget.drop_datagram(100)
        budget.count("copies_cut")
    assert [kind for kind, _ in said] == ["datagrams_dropped", "copies_cut"]
    assert all("agent.memory_budget (8 MiB)" in text and "\n" not in text for _, text in said)
    assert budget.stats()["datagrams_dropped"] == 3 and budget.stats()["datagram_bytes_dropped"] == 300


def test_datagrams_are_dropped_and_counted_while_the_channel_is_paused_or_the_budget_is_full():
    written: list[bytes] = []
    conn = p.Connection("agent")
    mux = Mux(conn, written.append, Budget(64 * KIB))
    conn.open_stream(2)
    relay = UdpRelay(mux, 2)
    relay.datagram_received(b"a" * 100, ("10.0.0.9", 53))
    assert len(written) == 1
    mux.pause_channel()
    relay.datagram_received(b"b" * 100, ("10.0.0.9", 53))
    mux.resume_channel()
    mux.budget.add_gauge(lambda: 60 * KIB)  # the channel's queue is nearly the whole budget
    relay.datagram_received(b"c" * 8 * KIB, ("10.0.0.9", 53))
    assert len(written) == 1
    assert mux.budget.counters["datagrams_dropped"] == 2
    assert mux.budget.counters["datagram_bytes_dropped"] == 100 + 8 * KIB


@pytest.mark.parametrize(("info", "limit"), [
    ({"memory_budget": 8 << 20}, 8 << 20),
    ({}, DEFAULT_BUDGET),  # an older session sends none
    ({"memory_budget": "lots"}, DEFAULT_BUDGET),
    ({"memory_budget": 1}, DEFAULT_BUDGET),
    ({"memory_budget": True}, DEFAULT_BUDGET),
])
def test_the_session_s_hello_sets_the_agent_s_budget(info, limit):
    async def run() -> int:
        agent = server.Agent(lambda data: None)
        session = p.Connection("session", info=info)
        session.send_hello()
        agent.on_bytes(session.data_to_send())
        return agent.budget.limit

    assert asyncio.run(run()) == limit


@pytest.mark.parametrize(("text", "size"), [
    ('"64MiB"', 64 << 20), ('"64 MiB"', 64 << 20), ('"8m"', 8 << 20), ('"1GiB"', 1 << 30),
    ("33554432", 32 << 20), ('"4096 KiB"', 4 << 20),
])
def test_memory_budget_takes_bytes_or_binary_units(tmp_path, text, size):
    conf = tmp_path / "mirror-py.toml"
    conf.write_text(f"[agent]\nmemory_budget = {text}\n")
    assert load_config(config_file=conf).agent.memory_budget == size


@pytest.mark.parametrize(("text", "why"), [
    ('"12 parsecs"', "not a size"), ('"64MB"', "not a size"), ("true", "not a size"), ("-5", "between"),
    ("1024", "must be between 4 MiB and 1024 GiB"), ('"2TiB"', "not a size"),
])
def test_a_bad_memory_budget_is_one_clear_line(tmp_path, text, why):
    conf = tmp_path / "mirror-py.toml"
    conf.write_text(f"[agent]\nmemory_budget = {text}\n")
    with pytest.raises(ConfigError) as info:
        load_config(config_file=conf)
    message = str(info.value)
    assert "\n" not in message and "agent.memory_budget" in message and why in message, message


def test_the_default_budget_is_32_mib(tmp_path):
    assert load_config(cwd=tmp_path).agent.memory_budget == 32 << 20 == DEFAULT_BUDGET


class _Transport:
    """What a TcpRelay needs of an asyncio transport, recording whether it reads."""

    def __init__(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str) -> None:
        return None

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def abort(self) -> None:
        self.reading = False


def test_a_tcp_stream_charges_what_it_read_and_cannot_send_and_no_stream_reads_while_the_budget_is_full():
    """Lossless bytes are never dropped: they wait in the peers' kernels. Before the budget, every stream
    whose peer outran the laptop held one more read each, however many streams there were."""
    conn = p.Connection("agent")
    session = p.Connection("session", window=64 * KIB)
    session.send_hello()
    conn.receive_data(session.data_to_send())
    mux = Mux(conn, lambda data: None, Budget(100 * KIB))
    relays = []
    for sid in (1, 3):
        conn.open_stream(sid)
        relay = TcpRelay(mux, sid)
        relay.attach(_Transport())  # type: ignore[arg-type]
        relay.start()
        relays.append(relay)
    first, second = relays
    first.data_received(b"a" * (64 * KIB + 40 * KIB))  # the window takes 64 KiB; 40 KiB wait for credit
    assert mux.budget.held == 40 * KIB
    second.data_received(b"b" * (64 * KIB + 70 * KIB))  # and 70 KiB more: the budget is full
    assert mux.budget.held == 110 * KIB and mux.budget.over()
    assert not first.transport.reading and not second.transport.reading
    third_sid = 5
    conn.open_stream(third_sid)
    third = TcpRelay(mux, third_sid)
    third.attach(_Transport())  # type: ignore[arg-type]
    third.start()
    assert not third.transport.reading  # a stream with room in its window still waits for the budget
    for ev in conn.receive_data(p.HEADER.pack(p.CREDIT, 3, 4) + (70 * KIB).to_bytes(4, "big")):
        mux.dispatch(ev)
    assert mux.budget.held == 40 * KIB
    assert third.transport.reading  # woken when the budget had room again
    first.on_channel_close("ECONNRESET")
    assert mux.budget.held == 0
