"""SPDY/3.1 framing (mirror_py/transport/spdy.py) byte by byte, and the SPDY exec client against small servers
that misbehave in every way the framing allows: each ends in one clear line, never a hang or a traceback."""

from __future__ import annotations

import asyncio
import json
import struct
import zlib
from collections.abc import Callable

import pytest

from mirror_py.errors import MirrorError
from mirror_py.transport import spdy
from mirror_py.transport.k8s_exec import FALLBACK_STATUSES, UpgradeRefused, falls_back
from mirror_py.transport.spdy_exec import SpdyExecChannel

# What kubectl 1.20 sent to the sandbox for `kubectl exec -i POD -c app -- cat` with "hi\n" on stdin: its four
# SYN_STREAMs (error, stdin, stdout, stderr; the header blocks of one zlib stream, primed with the SPDY/3
# dictionary), stdin's data and its FIN. Recorded from the real client, so it judges the dictionary and the
# shared compression context independently of this module's own encoder.
KUBECTL_120_STREAMS = bytes.fromhex(
    "80030001000000290000000100000000000078f9e3c6a7c26260606004a7b392a2d4c45c6851c29a0a0a6800000000ffff"
    "800300010000001700000003000000000000c22e555c92929907000000ffff"
    "800300010000001900000005000000000000c22ac5565c92925f5a02000000ffff"
    "800300010000001500000007000000000000c229975a5404000000ffff"
    "000000030000000368690a0000000301000000"
)


def test_kubectls_frames_decode():
    frames = spdy.Codec().feed(KUBECTL_120_STREAMS)
    assert frames == [
        spdy.SynStream(1, {"streamtype": ["error"]}), spdy.SynStream(3, {"streamtype": ["stdin"]}),
        spdy.SynStream(5, {"streamtype": ["stdout"]}), spdy.SynStream(7, {"streamtype": ["stderr"]}),
        spdy.Data(3, b"hi\n"), spdy.Data(3, b"", fin=True)]


def test_the_dictionary_is_the_spdy3_one():
    """Its size and its zlib id (the Adler-32 a peer's stream names in its header: kubectl's starts 78f9e3c6a7c2)."""
    assert len(spdy.DICTIONARY) == 1423
    assert zlib.adler32(spdy.DICTIONARY) == 0xE3C6A7C2
    assert KUBECTL_120_STREAMS[18:24] == bytes.fromhex("78f9e3c6a7c2")


ALL_FRAMES = [
    spdy.SynStream(1, {"streamtype": ["error"], "x": ["a", "b"]}, fin=True, unidirectional=True, priority=3),
    spdy.SynReply(1, {}),
    spdy.HeadersFrame(3, {"k": ["v"]}, fin=True),
    spdy.Data(3, b"\x00" * 70000),
    spdy.Data(5, b"", fin=True),
    spdy.RstStream(7, spdy.CANCEL),
    spdy.Settings(((0, 7, 65536), (1, 4, 100)), clear=True),
    spdy.Ping(2),
    spdy.GoAway(7, spdy.GOAWAY_OK),
    spdy.WindowUpdate(0, 1000),
    spdy.SynStream(9, {"streamtype": ["stdout"]}),  # a later block: the compression context carries over
]


def test_every_frame_round_trips_whole_and_byte_by_byte():
    sender = spdy.Codec()
    wire = b"".join(sender.encode(f) for f in ALL_FRAMES)
    assert spdy.Codec().feed(wire) == ALL_FRAMES
    receiver, got = spdy.Codec(), []
    for i in range(len(wire)):
        got += receiver.feed(wire[i : i + 1])
    assert got == ALL_FRAMES and receiver.pending == 0


def test_a_frame_cut_short_is_held_not_guessed():
    wire = spdy.Codec().encode(spdy.Data(1, b"abcdef"))
    codec = spdy.Codec()
    assert codec.feed(wire[:-2]) == [] and codec.pending == len(wire) - 2
    assert codec.feed(wire[-2:]) == [spdy.Data(1, b"abcdef")]


def test_unknown_and_obsolete_control_frames_are_skipped():
    codec = spdy.Codec()
    unknown = struct.pack(">HHI", 0x8003, 0x42, 3) + b"abc"
    noop = struct.pack(">HHI", 0x8003, spdy.NOOP, 0)
    assert codec.feed(unknown + noop + spdy.Codec().encode(spdy.Ping(1))) == [spdy.Ping(1)]


def _control(kind: int, body: bytes, flags: int = 0, version: int = 3) -> bytes:
    return struct.pack(">HHI", 0x8000 | version, kind, (flags << 24) | len(body)) + body


def _block(raw: bytes, dictionary: bytes = spdy.DICTIONARY) -> bytes:
    deflate = zlib.compressobj(zdict=dictionary)
    return deflate.compress(raw) + deflate.flush(zlib.Z_SYNC_FLUSH)


def _headers(*pairs: tuple[bytes, bytes]) -> bytes:
    out = struct.pack(">I", len(pairs))
    for name, value in pairs:
        out += struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value
    return out


SYN = struct.pack(">IIBB", 1, 0, 0, 0)
MALFORMED = {
    "version 2": (_control(spdy.PING, b"\0\0\0\1", version=2), "version 2"),
    "long RST_STREAM": (_control(spdy.RST_STREAM, b"\0" * 12), "RST_STREAM frame of 12 bytes (must be 8)"),
    "RST_STREAM status 0": (_control(spdy.RST_STREAM, struct.pack(">II", 1, 0)), "status 0"),
    "RST_STREAM stream 0": (_control(spdy.RST_STREAM, struct.pack(">II", 0, 5)), "on stream 0"),
    "short PING": (_control(spdy.PING, b"\0\0"), "PING frame of 2 bytes (must be 4)"),
    "short GOAWAY": (_control(spdy.GOAWAY, b"\0" * 4), "GOAWAY frame of 4 bytes (must be 8)"),
    "WINDOW_UPDATE of 0": (_control(spdy.WINDOW_UPDATE, struct.pack(">II", 1, 0)), "delta of 0"),
    "short SYN_STREAM": (_control(spdy.SYN_STREAM, b"\0" * 6), "SYN_STREAM frame of 6 bytes (at least 10)"),
    "SYN_STREAM stream 0": (_control(spdy.SYN_STREAM, struct.pack(">IIBB", 0, 0, 0, 0) + _block(_headers())),
                            "on stream 0"),
    "SETTINGS count": (_control(spdy.SETTINGS, struct.pack(">I", 3) + b"\0" * 8), "for 3 entries"),
    "DATA stream 0": (struct.pack(">II", 0, 1) + b"x", "DATA frame on stream 0"),
    "DATA flags": (struct.pack(">II", 1, (0x04 << 24) | 1) + b"x", "unknown flags 0x04"),
    "not zlib": (_control(spdy.SYN_STREAM, SYN + b"this is not zlib"), "does not decompress"),
    "wrong dictionary": (_control(spdy.SYN_STREAM, SYN + _block(_headers(), b"another dictionary")),
                         "does not decompress"),
    "header cut": (_control(spdy.SYN_STREAM, SYN + _block(_headers((b"name", b"value"))[:-3])),
                   "ends in the middle of a header"),
    "header count too high": (
        _control(spdy.SYN_STREAM, SYN + _block(struct.pack(">I", 2) + _headers((b"a", b"b"))[4:])),
        "ends in the middle of a header"),
    "bytes after": (_control(spdy.SYN_STREAM, SYN + _block(_headers((b"a", b"b")) + b"xx")), "2 bytes after"),
    "upper case": (_control(spdy.SYN_STREAM, SYN + _block(_headers((b"StreamType", b"error")))), "not lower case"),
    "twice": (_control(spdy.SYN_STREAM, SYN + _block(_headers((b"a", b"1"), (b"a", b"2")))), "appears twice"),
    "empty name": (_control(spdy.SYN_STREAM, SYN + _block(_headers((b"", b"1")))), "empty name"),
    "zip bomb": (_control(spdy.SYN_STREAM, SYN + _block(_headers((b"a", b"\0" * (8 << 20))))), "header block over"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_frame_is_one_clear_error(name):
    wire, words = MALFORMED[name]
    with pytest.raises(spdy.SpdyError) as err:
        spdy.Codec().feed(wire)
    text = str(err.value)
    assert words in text and text.startswith("SPDY") and "\n" not in text


def test_the_fallback_rule():
    """Retried over SPDY: the refusals SPDY can get past; reported as they are: those it would meet again."""
    assert FALLBACK_STATUSES == {101, 403, 405, 426, 501}
    assert all(falls_back(UpgradeRefused(s, "x")) for s in FALLBACK_STATUSES)
    assert not any(falls_back(UpgradeRefused(s, "x")) for s in (400, 401, 404, 500, 502, 503))


# ------------------------------------------------------------------------------------- the exec client


class _Listener:
    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()

    def on_bytes(self, data: bytes) -> None:
        self.out += data

    def on_stderr(self, data: bytes) -> None:
        self.err += data

    def on_pause(self) -> None:
        pass

    def on_resume(self) -> None:
        pass

    def on_closed(self, code, reason) -> None:
        if not self.closed.done():
            self.closed.set_result((code, reason))


class _Config:
    verify_ssl = True
    ssl_ca_cert = cert_file = key_file = proxy = None

    def __init__(self, port: int) -> None:
        self.host = f"http://127.0.0.1:{port}"

    def auth_settings(self) -> dict:
        return {"BearerToken": {"value": "Bearer t"}}


UPGRADED = (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
            b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n")


async def _client_against(script, open_timeout: float = 10.0):
    """A SpdyExecChannel opened against a server that runs ``script(reader, writer, request_head)``."""
    seen: dict = {}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen["head"] = head.decode()
        try:
            await script(reader, writer)
        finally:
            if not seen.get("keep"):
                writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    listener = _Listener()
    channel = SpdyExecChannel(_Config(port), "ns", "pod", "c", ["python3", "-c", "x"], "a pod",
                              open_timeout=open_timeout)
    return server, channel, listener, seen


async def _accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, codec: spdy.Codec,
                  then: Callable[[dict], list[spdy.Frame]] | None = None) -> dict:
    """The server's half of opening: a SYN_REPLY to each of the four streams, sent in one write with the frames
    ``then(streams)`` gives, if any (so that the client reads them together)."""
    writer.write(UPGRADED)
    streams: dict = {}
    replies = b""
    while len(streams) < 4:
        for frame in codec.feed(await reader.read(65536)):
            assert isinstance(frame, spdy.SynStream)
            streams[frame.headers["streamtype"][0]] = frame.stream_id
            replies += codec.encode(spdy.SynReply(frame.stream_id))
    writer.write(replies + b"".join(codec.encode(f) for f in (then(streams) if then else [])))
    await writer.drain()
    return streams


def test_a_whole_exec_stdin_to_exit_code():
    exit3 = {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
             "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}}

    async def script(reader, writer):
        codec = spdy.Codec()
        streams = await _accept(reader, writer, codec)
        got = bytearray()
        while True:  # stdin until its FIN: SPDY half-closes
            frames = codec.feed(await reader.read(65536))
            got += b"".join(f.data for f in frames if isinstance(f, spdy.Data))
            if any(isinstance(f, spdy.Data) and f.fin for f in frames):
                break
        for frame in (spdy.Data(streams["stdout"], bytes(got)), spdy.Data(streams["stderr"], b"warn"),
                      spdy.Ping(2), spdy.WindowUpdate(0, 5), spdy.Settings(((0, 7, 1),)),
                      spdy.Data(streams["error"], json.dumps(exit3).encode()),
                      *(spdy.RstStream(i, spdy.CANCEL) for i in streams.values()), spdy.GoAway(0)):
            writer.write(codec.encode(frame))
        await writer.drain()
        pong = codec.feed(await reader.read(65536))
        assert pong == [spdy.Ping(2)]

    async def main():
        server, channel, listener, seen = await _client_against(script)
        async with server:
            await channel.open(listener)
            channel.write(b"x" * 300000)
            channel.close_input()
            result = await asyncio.wait_for(listener.closed, 10)
        return seen, listener, result

    seen, listener, result = asyncio.run(main())
    assert seen["head"].startswith("POST /api/v1/namespaces/ns/pods/pod/exec?command=python3&command=-c&command=x&")
    assert "Upgrade: SPDY/3.1\r\n" in seen["head"] and "X-Stream-Protocol-Version: v4.channel.k8s.io" in seen["head"]
    assert (bytes(listener.out), bytes(listener.err), result) == (b"x" * 300000, b"warn", (3, None))


async def _upgraded_then(after: bytes, reader, writer):
    codec = spdy.Codec()
    await _accept(reader, writer, codec)
    codec.feed(await reader.read(65536))  # the client is open (it writes stdin): now break its stream
    writer.write(after)
    await writer.drain()


@pytest.mark.parametrize("after, words", [
    (_control(spdy.PING, b"\0\0\0\2", version=2), "SPDY control frame of version 2"),
    (spdy.Codec().encode(spdy.Data(5, b"x" * 100))[:50], "ended inside a frame"),
    (_control(spdy.SYN_REPLY, b"\0\0\0\1" + b"garbage"), "does not decompress"),
])
def test_a_broken_stream_ends_the_channel_with_the_reason(after, words):
    async def main():
        server, channel, listener, _ = await _client_against(lambda r, w: _upgraded_then(after, r, w))
        async with server:
            await channel.open(listener)
            channel.write(b"go")
            return await asyncio.wait_for(listener.closed, 10)

    code, reason = asyncio.run(main())
    assert code is None and words in reason and "\n" not in reason


async def _answer(raw: bytes, reader, writer):
    writer.write(raw)
    await writer.drain()


async def _hold(reader, writer):
    await asyncio.sleep(30)


async def _garbage_during_open(reader, writer):
    writer.write(UPGRADED + _control(spdy.RST_STREAM, b"\0" * 3))
    await writer.drain()


async def _refuse_a_stream(reader, writer):
    codec = spdy.Codec()
    writer.write(UPGRADED)
    codec.feed(await reader.read(65536))
    writer.write(codec.encode(spdy.RstStream(3, spdy.REFUSED_STREAM)))
    await writer.drain()
    await asyncio.sleep(5)


FORBIDDEN = json.dumps({"kind": "Status", "message": 'pods "pod" is forbidden: User "u" cannot create resource '
                                                     '"pods/exec"'}).encode()


@pytest.mark.parametrize("script, words", [
    (lambda r, w: _answer(b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: "
                          + str(len(FORBIDDEN)).encode() + b"\r\n\r\n" + FORBIDDEN, r, w),
     'cannot create resource "pods/exec"'),
    (lambda r, w: _answer(UPGRADED.replace(b"v4.channel", b"v2.channel"), r, w), "chose exec protocol"),
    (lambda r, w: _answer(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                          r, w), "no SPDY/3.1 upgrade"),
    (lambda r, w: _answer(b"SSH-2.0-OpenSSH\r\n\r\n", r, w), "not HTTP"),
    (lambda r, w: _answer(b"", r, w), "closed the connection without answering"),
    (_garbage_during_open, "RST_STREAM frame of 3 bytes"),
    (_refuse_a_stream, "refused the exec's stdin stream (REFUSED_STREAM)"),
    (_hold, "no answer within 0.5 s"),
])
def test_an_exec_that_cannot_open_says_why_in_one_line(script, words):
    async def main():
        server, channel, listener, seen = await _client_against(script, open_timeout=0.5)
        seen["keep"] = script is _hold
        async with server:
            with pytest.raises(MirrorError) as err:
                await channel.open(listener)
            return str(err.value)

    text = asyncio.run(main())
    assert words in text and "\n" not in text


# ------------------------------------------------------------------------------------- the fallback in action


def _pod_exec_server(websocket_answer: bytes):
    """A server that answers the websocket upgrade (a GET) with ``websocket_answer`` and runs an SPDY exec (a
    POST) whose command prints "spdy" and exits 0; it records each request line."""
    requests: list[str] = []
    success = json.dumps({"metadata": {}, "status": "Success"}).encode()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            requests.append(head.split(" ", 1)[0])
            if head.startswith("GET"):
                writer.write(websocket_answer)
                await writer.drain()
                return
            # The whole exec of a fast command, in one write with the replies: output, status, close.
            await _accept(reader, writer, spdy.Codec(), lambda streams: [
                spdy.Data(streams["stdout"], b"spdy"), spdy.Data(streams["error"], success),
                *(spdy.RstStream(i, spdy.CANCEL) for i in streams.values()), spdy.GoAway(0)])
        finally:
            writer.close()

    return serve, requests


def _answer_with(status: str, body: bytes = b"") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


@pytest.mark.parametrize("answer, fallback", [
    (_answer_with("403 Forbidden", FORBIDDEN.replace(b"create", b"get")), True),
    (_answer_with("403 Forbidden"), True),  # no subprotocol in common
    (_answer_with("405 Method Not Allowed"), True),
    (_answer_with("426 Upgrade Required"), True),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Accept: wrong\r\n\r\n", True),
    (_answer_with("404 Not Found", b'{"message": "pods \\"pod\\" not found"}'), False),
    (_answer_with("401 Unauthorized", b'{"message": "Unauthorized"}'), False),
    (_answer_with("500 Internal Server Error", b'{"message": "container not found (\\"c\\")"}'), False),
])
def test_exec_falls_back_to_spdy_exactly_on_the_refusals_it_can_get_past(answer, fallback, caplog):
    from mirror_py.transport import k8s_exec

    async def main():
        serve, requests = _pod_exec_server(answer)
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        cfg = _Config(server.sockets[0].getsockname()[1])
        listener = _Listener()
        async with server:
            channel = k8s_exec.ExecChannel(cfg, "ns", "pod", "c", ["python3"], "a pod", open_timeout=5)
            try:
                await channel.open(listener)
            except MirrorError as exc:
                return requests, str(exc), None, None
            channel.close_input()
            result = await asyncio.wait_for(listener.closed, 10)
            return requests, None, bytes(listener.out), (result, channel.protocol)

    k8s_exec._announced.clear()
    with caplog.at_level("INFO", logger="mirror_py.session"):
        requests, error, out, result = asyncio.run(main())
    if fallback:
        assert (requests, error, out, result) == (["GET", "POST"], None, b"spdy",
                                                  ((0, None), "SPDY/3.1+v4.channel.k8s.io"))
        assert [r.getMessage() for r in caplog.records if "SPDY/3.1, as kubectl does" in r.getMessage()]
    else:
        assert requests == ["GET"] and "\n" not in error and out is None
