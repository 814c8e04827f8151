"""What tests/e2e/test_c_files.py runs through mirror-py: C code opening files by name (libsqlite3, OpenSSL
loading a CA file, libcurl) where the file exists only in the target pod.

``python c_files_app.py SCENARIO`` prints one JSON line. The pod's files are under /srv/ledger and
/etc/ledger-ca, which this machine does not have; its HTTPS server answers as the ``ledger`` Service.
"""

from __future__ import annotations

import hashlib
import json
import sys

DB = "/srv/ledger/app.db"
SCRATCH = "/srv/ledger/scratch.db"
NOTES = "/srv/ledger/notes.txt"
CA = "/etc/ledger-ca/ca.pem"
URL = "https://ledger:8443/"


def _rows(conn) -> list:
    return [list(row) for row in conn.execute("select id, name from entries order by id")]


def _attempt(fn) -> dict:
    try:
        return {"value": fn(), "error": None}
    except Exception as exc:  # the scenario reports what the app would see
        return {"value": None, "error": f"{type(exc).__name__}: {exc}"}


def sqlite_read_scenario() -> dict:
    """The pod's database (app.db, or the path given) by its plain path and as a read-only URI."""
    import sqlite3

    path = sys.argv[2] if len(sys.argv) > 2 else DB

    def plain() -> list:
        conn = sqlite3.connect(path)
        try:
            return _rows(conn)
        finally:
            conn.close()

    def uri() -> list:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return _rows(conn)
        finally:
            conn.close()

    return {"plain": _attempt(plain), "uri": _attempt(uri)}


def _pod_digest(path: str) -> str:
    with open(path, "rb") as f:  # Python's open: the pod's file through the file surface
        return hashlib.sha256(f.read()).hexdigest()


def sqlite_write_scenario() -> dict:
    """Opens the pod's database for writing from C and inserts a row; then reads it back from the pod."""
    import sqlite3

    before = _pod_digest(SCRATCH)

    def write() -> int:
        conn = sqlite3.connect(f"file:{SCRATCH}?mode=rw", uri=True)
        try:
            conn.execute("insert into entries (name) values ('from the laptop')")
            conn.commit()
            return len(_rows(conn))
        finally:
            conn.close()

    out = {"write": _attempt(write), "before": before}
    conn = sqlite3.connect(f"file:{SCRATCH}?mode=ro", uri=True)
    try:
        out["rows_after"] = _rows(conn)
    finally:
        conn.close()
    out["after"] = _pod_digest(SCRATCH)
    return out


def bio_write_scenario() -> dict:
    """OpenSSL's file BIO (``fopen``, ``fclose`` inside libcrypto) writes a new file under the pod's directory,
    then reads it back with ``fopen`` from C and with Python's ``open``."""
    import ctypes
    import os

    crypto = ctypes.CDLL("libcrypto.so.3")
    crypto.BIO_new_file.restype, crypto.BIO_new_file.argtypes = ctypes.c_void_p, (ctypes.c_char_p, ctypes.c_char_p)
    crypto.BIO_write.restype, crypto.BIO_write.argtypes = ctypes.c_int, (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int)
    crypto.BIO_read.restype, crypto.BIO_read.argtypes = ctypes.c_int, (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int)
    crypto.BIO_free.restype, crypto.BIO_free.argtypes = ctypes.c_int, (ctypes.c_void_p,)
    path = NOTES.encode()
    text = b"written from C\n"
    bio = crypto.BIO_new_file(path, b"w")
    out: dict = {"opened": bool(bio)}
    if bio:
        out["written"] = crypto.BIO_write(bio, text, len(text))
        out["freed"] = crypto.BIO_free(bio)
    bio = crypto.BIO_new_file(path, b"r")
    if bio:
        buf = ctypes.create_string_buffer(256)
        count = crypto.BIO_read(bio, buf, 256)
        out["c_read"] = buf.raw[:count].decode()
        crypto.BIO_free(bio)
    out["in_pod"] = os.path.exists(NOTES)
    if out["in_pod"]:
        with open(NOTES) as f:
            out["python_read"] = f.read()
    return out


def ssl_cafile_scenario() -> dict:
    """OpenSSL reads the pod's CA file (cafile=); the HTTPS server in the pod presents a certificate it
    signed."""
    import ssl
    import urllib.request

    def fetch() -> str:
        ctx = ssl.create_default_context(cafile=None)
        ctx.load_verify_locations(cafile=CA)
        with urllib.request.urlopen(URL, context=ctx, timeout=30) as reply:
            return reply.read().decode()

    return {"fetch": _attempt(fetch)}


def pycurl_cafile_scenario() -> dict:
    """libcurl's own OpenSSL reads the pod's CA file (CAINFO) and verifies the pod's server."""
    import io

    import pycurl

    def fetch() -> dict:
        body = io.BytesIO()
        curl = pycurl.Curl()
        try:
            curl.setopt(pycurl.URL, URL)
            curl.setopt(pycurl.CAINFO, CA)
            curl.setopt(pycurl.WRITEDATA, body)
            curl.setopt(pycurl.TIMEOUT, 30)
            curl.perform()
            return {"status": curl.getinfo(pycurl.RESPONSE_CODE), "body": body.getvalue().decode()}
        finally:
            curl.close()

    return {"fetch": _attempt(fetch)}


def https_server_scenario() -> dict:
    """The pod's HTTPS server: PORT CERT KEY (files of the pod)."""
    import http.server
    import ssl

    port, cert, key = int(sys.argv[2]), sys.argv[3], sys.argv[4]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"ledger over TLS\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()
    return {}


SCENARIOS = {name[: -len("_scenario")]: fn for name, fn in globals().items() if name.endswith("_scenario")}

if __name__ == "__main__":
    result = SCENARIOS[sys.argv[1]]()
    if result:
        print(json.dumps(result))
