"""The exec stream's connection opened ahead (mirror_py/transport/warm.py): used when it is alive, and when the
server closed it while it waited (an idle timeout) the exec stream connects anew as if there had been none."""

from __future__ import annotations

import asyncio
import types

from websockets.asyncio.server import serve

from mirror_py.transport.k8s_exec import V5, ExecChannel
from mirror_py.transport.warm import WarmConnection


class _Listener:
    def on_bytes(self, data: bytes) -> None:
        pass

    def on_stderr(self, data: bytes) -> None:
        pass

    def on_pause(self) -> None:
        pass

    def on_resume(self) -> None:
        pass

    def on_closed(self, exit_code, reason) -> None:
        pass


def _config(port: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(host=f"http://127.0.0.1:{port}", proxy=None, verify_ssl=True, cert_file=None,
                                 key_file=None, ssl_catalog=None, tls_server_name=None, auth_settings=lambda: {})


async def _exec_server(drop_first: bool):
    """A websocket server behind a door that counts connections and, with ``drop_first``, closes the first one
    once its client has connected (as an API server's idle timeout would)."""
    seen = []

    async def handler(ws):
        await ws.send(b"\x01")
        await ws.wait_closed()

    inner = await serve(handler, "127.0.0.1", 0, subprotocols=[V5])
    inner_port = inner.sockets[0].getsockname()[1]

    async def door(reader, writer):
        seen.append(writer)
        if drop_first and len(seen) == 1:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", inner_port)

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    outer = await asyncio.start_server(door, "127.0.0.1", 0)
    return inner, outer, outer.sockets[0].getsockname()[1], seen


async def _open(drop_first: bool) -> tuple[int, str | None]:
    inner, outer, port, seen = await _exec_server(drop_first)
    try:
        cfg = _config(port)
        warm = WarmConnection(cfg, 5)
        warm.start()
        for _ in range(100):  # the door has seen the connection (and, if asked to, closed it)
            if seen:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        channel = ExecChannel(cfg, "ns", "pod", "c", ["python3"], "a test pod", warm=warm)
        await channel.open(_Listener())
        protocol = channel.protocol
        channel.kill()
        return len(seen), protocol
    finally:
        outer.close()
        inner.close()


def test_an_open_connection_carries_the_upgrade():
    connections, protocol = asyncio.run(_open(drop_first=False))
    assert protocol == V5 and connections == 1


def test_a_connection_closed_while_waiting_is_replaced_by_a_new_one():
    connections, protocol = asyncio.run(_open(drop_first=True))
    assert protocol == V5 and connections == 2
