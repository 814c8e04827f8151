"""The words an agent sends with an error: the kernel's for an errno, whatever library raised it."""

from __future__ import annotations

import asyncio
import errno
import socket

from mirror_py_agent import protocol as p
from mirror_py_agent.relay import errno_name, error_text, kernel_error
from mirror_py_agent.server import Agent


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refused_connect_carries_the_kernels_words():
    """The agent connects with asyncio, whose error says "Connect call failed ('127.0.0.1', N)"; the reply must
    say what a plain connect in the pod says."""
    port = _closed_port()

    async def main() -> list[p.Event]:
        sent = bytearray()
        agent = Agent(sent.extend)
        session = p.Connection("session")
        session.send_hello()
        agent.on_bytes(session.data_to_send())
        session.send_request("connect", {"sid": 1, "host": "127.0.0.1", "port": port}, opens_stream=1)
        agent.on_bytes(session.data_to_send())
        await asyncio.gather(*agent.tasks)
        return session.receive_data(bytes(sent))

    events = asyncio.run(main())
    [err] = [e for e in events if isinstance(e, p.ErrorReply)]
    assert (err.errno, err.message) == ("ECONNREFUSED", "Connection refused")


def test_error_text_rules():
    assert error_text(OSError(errno.EHOSTUNREACH, "No route to host")) == "No route to host"
    # The agent's own explanation is what the user needs to read.
    assert error_text(PermissionError(errno.EPERM, "the agent has no CAP_NET_ADMIN")) == (
        "the agent has no CAP_NET_ADMIN")
    assert error_text(asyncio.TimeoutError()) == "timed out"
    assert errno_name(asyncio.TimeoutError()) == "TIMEOUT"
    assert errno_name(TimeoutError(errno.ETIMEDOUT, "Connection timed out")) == "ETIMEDOUT"
    assert error_text(socket.gaierror(socket.EAI_NONAME, "Name or service not known")) == "Name or service not known"
    assert error_text(OSError("Multiple exceptions: a, b")) == "Multiple exceptions: a, b"


def test_kernel_error_undoes_asyncios_rewording():
    reworded = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('10.0.0.1', 80)")
    plain = kernel_error(reworded)
    assert type(plain) is ConnectionRefusedError and plain.args == (errno.ECONNREFUSED, "Connection refused")
    kept = OSError("Multiple exceptions: a, b")
    assert kernel_error(kept) is kept
