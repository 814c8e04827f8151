"""Stream ids of a long session: they wrap below the frame header's limit and never collide with a live one."""

from __future__ import annotations

from mirror_py.session.agent_link import STREAM_ID_LIMIT, AgentLink
from mirror_py_agent import protocol as p


class _Channel:
    description = "a test channel"

    def write(self, data: bytes) -> None:
        pass


def test_session_stream_ids_wrap_and_skip_the_ones_in_use():
    link = AgentLink(_Channel())  # type: ignore[arg-type]
    assert [link.new_stream_id() for _ in range(3)] == [1, 3, 5]
    link.conn.open_stream(1)  # still open when the ids come round again
    link._next_sid = STREAM_ID_LIMIT - 3
    got = [link.new_stream_id() for _ in range(3)]
    assert got == [STREAM_ID_LIMIT - 3, STREAM_ID_LIMIT - 1, 3]
    for sid in got:
        assert sid % 2 == 1
        p.HEADER.pack(p.DATA, sid, 0)  # every id fits the frame header
