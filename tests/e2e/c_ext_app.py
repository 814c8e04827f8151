"""What tests/e2e/test_c_extensions.py runs through mirror-py: C extensions doing their own networking.

``python c_ext_app.py SCENARIO`` prints one JSON line. The PostgreSQL and HTTP servers are the sandbox's
``staging`` pods, reached by their Service names, which only the pod's DNS knows.
"""

from __future__ import annotations

import json
import os
import sys

PG = "host=postgres port=5432 user=app dbname=postgres connect_timeout=10"


def psycopg2_scenario() -> dict:
    import psycopg2

    conn = psycopg2.connect(PG)
    out: dict = {}
    with conn.cursor() as cur:
        cur.execute("select version(), host(inet_client_addr())")
        out["version"], out["client_addr"] = cur.fetchone()
    with conn:  # a transaction: rolled back on the error, so the row never lands
        with conn.cursor() as cur:
            cur.execute("create table if not exists c_ext_t (n int)")
    try:
        with conn:
            with conn.cursor() as cur:
                cur.execute("insert into c_ext_t values (1)")
                raise RuntimeError("roll back")
    except RuntimeError:
        pass
    with conn.cursor() as cur:
        cur.execute("select count(*) from c_ext_t")
        out["rows_after_rollback"] = cur.fetchone()[0]
    with conn:
        with conn.cursor(name="server_side") as cur:  # a server-side cursor: fetched in batches
            cur.itersize = 100
            cur.execute("select n from generate_series(1, 1000) as n")
            out["server_side_sum"] = sum(row[0] for row in cur)
    out["peer"] = conn.info.host
    conn.close()
    return out


def sqlalchemy_scenario() -> dict:
    import sqlalchemy

    engine = sqlalchemy.create_engine("postgresql+psycopg2://app@postgres:5432/postgres")
    with engine.begin() as conn:
        version = conn.execute(sqlalchemy.text("show server_version")).scalar()
        total = conn.execute(sqlalchemy.text("select sum(n) from generate_series(1, 10) n")).scalar()
    engine.dispose()
    return {"version": version, "total": total, "driver": engine.dialect.driver}


def psycopg3_scenario() -> dict:
    import psycopg

    out: dict = {}
    with psycopg.connect(PG) as conn:
        out["impl"] = psycopg.pq.__impl__
        addr = conn.execute("select host(inet_client_addr())").fetchone()[0]
        out["client_addr"] = addr.decode() if isinstance(addr, bytes) else addr  # an SQL_ASCII database
        with conn.transaction():
            conn.execute("create temp table t3 (n int)")
            conn.execute("insert into t3 values (1), (2)")
        with conn.cursor(name="server_side_3") as cur:
            cur.execute("select n from generate_series(1, 500) as n")
            out["server_side_sum"] = sum(row[0] for row in cur)
    return out


def refused_scenario() -> dict:
    import psycopg2

    try:
        psycopg2.connect("host=postgres port=5439 user=app dbname=postgres connect_timeout=10")
    except psycopg2.OperationalError as exc:
        return {"error": str(exc)}
    return {"error": None}


def pycurl_scenario() -> dict:
    from io import BytesIO

    import pycurl

    buf = BytesIO()
    curl = pycurl.Curl()
    curl.setopt(pycurl.URL, "http://api:8000/app.yaml")
    curl.setopt(pycurl.WRITEDATA, buf)
    curl.setopt(pycurl.TIMEOUT, 20)
    curl.perform()
    out = {"status": curl.getinfo(pycurl.RESPONSE_CODE), "body": buf.getvalue().decode(),
           "primary_ip": curl.getinfo(pycurl.PRIMARY_IP)}
    curl.close()
    return out


def _libpq_path() -> str:
    """libpq as psycopg2-binary ships it, found without importing psycopg2 (so nothing but ctypes loads it)."""
    import glob
    import importlib.util

    spec = importlib.util.find_spec("psycopg2")
    libs = os.path.join(os.path.dirname(os.path.dirname(spec.origin)), "psycopg2_binary.libs")
    return glob.glob(os.path.join(libs, "libpq-*.so*"))[0]


def _pq_connect(lib, conninfo: str) -> tuple[int, str]:
    import ctypes

    lib.PQconnectdb.restype = ctypes.c_void_p
    lib.PQconnectdb.argtypes = (ctypes.c_char_p,)
    lib.PQstatus.argtypes = (ctypes.c_void_p,)
    lib.PQerrorMessage.restype = ctypes.c_char_p
    lib.PQerrorMessage.argtypes = (ctypes.c_void_p,)
    lib.PQfinish.argtypes = (ctypes.c_void_p,)
    conn = lib.PQconnectdb(conninfo.encode())
    status = lib.PQstatus(conn)
    message = (lib.PQerrorMessage(conn) or b"").decode()
    lib.PQfinish(conn)
    return status, message


def late_cdll_scenario() -> dict:
    """A library loaded with ctypes.CDLL after start-up, never imported as a module."""
    import ctypes

    status, message = _pq_connect(ctypes.CDLL(_libpq_path()), PG)
    return {"status": status, "message": message}


def raising_hook_scenario() -> dict:
    """mirror-py's own code fails inside the connect hook: C must see a failure, never a silent success."""
    import socket

    import psycopg2

    from mirror_py.shim import net

    ip = socket.gethostbyname("postgres")

    def broken(*args, **kwargs):
        raise RuntimeError("injected failure")

    net.planned = broken  # what the connect decision (net.route_connect) asks first
    try:
        psycopg2.connect(f"host={ip} port=5432 user=app dbname=postgres connect_timeout=10")
    except psycopg2.OperationalError as exc:
        return {"error": str(exc)}
    return {"error": None}


def c_fork_scenario() -> dict:
    """fork() called from C: the child never enters the shim; an os.fork() child stays interposed."""
    import ctypes
    import socket  # noqa: F401 - the shim patches it on import, before its own modules are imported here

    from mirror_py.shim import dns

    lib = ctypes.CDLL(_libpq_path())
    entered: list[str] = []
    remote_name = dns.remote_name

    def counting(host, *args):
        entered.append(str(host))
        return remote_name(host, *args)

    dns.remote_name = counting
    out: dict = {"parent": _pq_connect(lib, PG)[0], "parent_hooked": len(entered)}
    for kind in ("c", "os"):
        read, write = os.pipe()
        pid = ctypes.CDLL(None).fork() if kind == "c" else os.fork()
        if pid == 0:
            entered.clear()
            status, message = _pq_connect(lib, PG)
            os.write(write, json.dumps([status, len(entered), message]).encode())
            os._exit(0)
        os.close(write)
        data = b""
        while chunk := os.read(read, 65536):
            data += chunk
        os.close(read)
        os.waitpid(pid, 0)
        status, hooked, message = json.loads(data)
        out[kind] = {"status": status, "hooked": hooked, "message": message}
    return out


def busy_exit_scenario() -> dict:
    """Exit while grpc's C threads keep resolving and connecting (a server that never speaks gRPC)."""
    import socket  # noqa: F401 - the shim patches it on import, before its own modules are imported here

    import grpc

    from mirror_py.shim import dns

    entered: list[str] = []
    remote_name = dns.remote_name

    def counting(host, *args):
        entered.append(str(host))
        return remote_name(host, *args)

    dns.remote_name = counting
    channels = [grpc.insecure_channel(f"api:{8000 + i % 2}") for i in range(4)]
    for channel in channels:
        try:
            grpc.channel_ready_future(channel).result(timeout=1)
        except grpc.FutureTimeoutError:
            pass
    print(json.dumps({"hooked": sorted(set(entered))}), flush=True)
    return {}


def uvicorn_scenario() -> dict:
    """A Starlette app served by uvicorn on uvloop (libuv resolves, binds, listens and connects in C): it
    receives the target's stolen requests and calls another pod's Service by name with httpx and aiohttp."""
    import asyncio

    import aiohttp
    import httpx
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def call(request):
        async with httpx.AsyncClient() as client:
            reply = await client.get("http://web:8080/")
        async with aiohttp.ClientSession() as session:  # its default resolver: loop.getaddrinfo, in C here
            async with session.get("http://web:8080/") as response:
                second = await response.text()
        return JSONResponse({"server": "local", "web": reply.text, "aiohttp": second,
                             "loop": type(asyncio.get_running_loop()).__module__, "client": request.client.host})

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            print("READY {}", flush=True)

    config = uvicorn.Config(Starlette(routes=[Route("/call", call)]), host="0.0.0.0", port=int(sys.argv[2]),
                            loop="uvloop", log_level="warning", lifespan="off")
    Server(config).run()
    return {}


def web_server_scenario() -> dict:
    """A plain HTTP server in a pod, for the apps above to call by its Service name."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"web says hi"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    http.server.HTTPServer(("", int(sys.argv[2])), Handler).serve_forever()
    return {}


def _echo_handler(label: str, log: str | None = None):
    import grpc

    def say(request: bytes, context) -> bytes:
        if log:  # what this server received, for a test that cannot see its answers (mirrored traffic)
            with open(log, "ab") as f:
                f.write(request + b"\n")
        return label.encode() + b":" + request

    return grpc.method_handlers_generic_handler("echo.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)})


def grpc_server_scenario() -> dict:
    """A grpcio server (C core: bind and listen in C) answering ``LABEL:request`` on PORT."""
    from concurrent import futures

    import grpc

    port, label = int(sys.argv[2]), sys.argv[3]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((_echo_handler(label, sys.argv[4] if len(sys.argv) > 4 else None),))
    server.add_insecure_port(f"[::]:{port}")
    server.start()
    print("READY {}", flush=True)
    server.wait_for_termination()
    return {}


def grpc_client_scenario() -> dict:
    """grpcio's C core calling a pod's gRPC server by its Service name."""
    import grpc

    with grpc.insecure_channel("grpc-echo:50051") as channel:
        say = channel.unary_unary("/echo.Echo/Say")
        reply = say(b"hello", timeout=20)
    return {"reply": reply.decode(), "resolver": os.environ.get("GRPC_DNS_RESOLVER")}


def _ares_call(fn, *args, **kwargs) -> tuple:
    """One pycares call, waited for: (result, error name or None)."""
    import threading

    import pycares

    done, box = threading.Event(), {}

    def callback(result, error):
        box["result"], box["error"] = result, error
        done.set()

    fn(*args, callback=callback, **kwargs)
    if not done.wait(30):
        return None, "no answer in 30 s"
    error = box["error"]
    return box["result"], (pycares.errno.errorcode.get(error, error) if error else None)


def pycares_scenario() -> dict:
    """c-ares asking for Service names: the names of the pod's DNS, with the pod's search list. ``argv[2:]``:
    name servers to give c-ares instead of its own resolv.conf reading."""
    import socket

    import pycares

    channel = pycares.Channel(timeout=5.0, tries=2, servers=sys.argv[2:] or None)
    out: dict = {"python": socket.gethostbyname("web")}  # what the pod's resolver says, through mirror-py
    result, error = _ares_call(channel.query, "web.staging.svc.cluster.local", pycares.QUERY_TYPE_A)
    out["fqdn"] = error or sorted(r.data.addr for r in result.answer if r.type == pycares.QUERY_TYPE_A)
    result, error = _ares_call(channel.search, "web", pycares.QUERY_TYPE_A)
    out["short"] = error or sorted(r.data.addr for r in result.answer if r.type == pycares.QUERY_TYPE_A)
    result, error = _ares_call(channel.getaddrinfo, "grpc-echo", 50051, family=socket.AF_INET,
                               type=socket.SOCK_STREAM)
    out["getaddrinfo"] = error or sorted({n.addr[0].decode() if isinstance(n.addr[0], bytes) else n.addr[0]
                                          for n in result.nodes})
    out["grpc_python"] = socket.gethostbyname("grpc-echo")
    _result, out["missing"] = _ares_call(channel.query, "no-such-service.staging.svc.cluster.local",
                                         pycares.QUERY_TYPE_A)
    channel.close()
    return out


def aiodns_scenario() -> dict:
    """aiodns (c-ares under asyncio) resolving a Service name by its short name."""
    import asyncio
    import socket

    import aiodns

    async def main() -> list:
        resolver = aiodns.DNSResolver(timeout=5.0, tries=2)
        answer = await resolver.query("web", "A")
        await resolver.close()
        return sorted(r.host for r in answer)

    return {"aiodns": asyncio.run(main()), "python": socket.gethostbyname("web")}


def dnspython_scenario() -> dict:
    """A DNS client written in Python, told to ask this machine's name server (``argv[2]``) itself: unconnected
    ``sendto`` datagrams, answered with the pod's view."""
    import socket

    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [sys.argv[2]]
    resolver.lifetime = 10
    answer = resolver.resolve("web", "A", search=False)
    out = {"short": sorted(r.address for r in answer), "python": socket.gethostbyname("web")}
    try:
        resolver.resolve("no-such-service.staging.svc.cluster.local", "A", search=False)
        out["missing"] = "resolved"
    except dns.resolver.NXDOMAIN:
        out["missing"] = "NXDOMAIN"
    return out


SCENARIOS = {name[: -len("_scenario")]: fn for name, fn in globals().items() if name.endswith("_scenario")}

if __name__ == "__main__":
    result = SCENARIOS[sys.argv[1]]()
    if result:
        print(json.dumps(result))
