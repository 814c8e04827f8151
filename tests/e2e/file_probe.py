"""File-API probes: each subcommand exercises part of the file surface the way an app would and prints one JSON
line. The same probe runs natively inside a sandbox pod and, through ``mirror-py exec``, from the host: the
results must be identical (contents, sizes, modes, listings, errors).

Errors are recorded as ``[exception name, errno]`` so that a parity failure shows which call differed.
"""

from __future__ import annotations

import configparser
import glob
import io
import json
import mmap
import os
import pathlib
import select
import shutil
import ssl
import stat
import sys

PROBES = {}
DATA = "/srv/pod-data"
CONFIG = "/etc/config"


def probe(fn):
    PROBES[fn.__name__] = fn
    return fn


def attempt(fn):
    try:
        return fn()
    except Exception as exc:
        return [type(exc).__name__, getattr(exc, "errno", None)]


def st_fields(st: os.stat_result) -> list:
    return [stat.filemode(st.st_mode), st.st_size, st.st_uid, st.st_gid, st.st_nlink, st.st_ino, st.st_dev,
            st.st_mtime_ns, st.st_mtime, int(st.st_mtime)]


def shim_active() -> bool:
    shim = sys.modules.get("mirror_py.shim")
    return bool(shim and shim.active())


# --------------------------------------------------------------------------------------------- reading
@probe
def read_apis() -> dict:
    out: dict = {}
    app = f"{CONFIG}/app.yaml"
    with open(app) as f:
        out["text"] = f.read()
        out["name"] = f.name
        out["mode"] = f.mode
        out["tell"] = f.tell()
    with io.open(app, "rb") as f:  # noqa: UP020 - io.open is patched by its own name
        out["io_open_partial"] = [f.read(4).decode(), f.tell(), f.seek(2), f.read(3).decode()]
    with open(app, buffering=0, mode="rb") as f:
        out["unbuffered"] = [type(f).__name__, f.read().decode()]
    with open(app, buffering=1) as f:
        out["line_buffered_lines"] = list(f)
    with open(f"{CONFIG}/crlf.txt", newline="") as f:
        out["newline_none_translation_off"] = f.read()
    with open(f"{CONFIG}/crlf.txt") as f:
        out["newline_universal"] = f.readlines()
    with open(f"{CONFIG}/crlf.txt", newline="\r") as f:
        out["newline_cr"] = f.readlines()
    with open(f"{CONFIG}/latin1.txt", encoding="latin-1") as f:
        out["latin1"] = f.read()
    out["latin1_as_utf8"] = attempt(lambda: open(f"{CONFIG}/latin1.txt", encoding="utf-8").read())
    with open(f"{CONFIG}/latin1.txt", encoding="utf-8", errors="replace") as f:
        out["utf8_replace"] = f.read()
    with open(f"{CONFIG}/binary.bin", "rb") as f:
        data = f.read()
        out["binary"] = [len(data), data[:8].hex(), data[-8:].hex(), sum(data)]
    with open(app, opener=lambda path, flags: os.open(path, flags)) as f:
        out["opener"] = f.read()
    with open(pathlib.Path(app), "rb") as f:
        out["pathlike"] = [f.read().decode(), f.name]
    with open(app.encode(), "rb") as f:
        out["bytes_path"] = [f.read().decode(), f.name.decode()]
    fd = os.open(app, os.O_RDONLY)
    out["os_read"] = [os.read(fd, 5).decode(), os.lseek(fd, 0, os.SEEK_CUR), os.lseek(fd, -4, os.SEEK_END),
                      os.read(fd, 100).decode(), os.read(fd, 100).decode()]
    out["os_fstat"] = st_fields(os.fstat(fd))
    out["os_write_on_read_only"] = attempt(lambda: os.write(fd, b"x"))
    os.close(fd)
    out["closed_again"] = attempt(lambda: os.close(fd))
    with open(app) as f:
        out["fstat_of_file"] = st_fields(os.fstat(f.fileno()))
        out["select_readable"] = bool(select.select([f], [], [], 0)[0])
    return out


@probe
def metadata() -> dict:
    out: dict = {}
    paths = [f"{CONFIG}/app.yaml", CONFIG, f"{DATA}/link-a", f"{DATA}/link-tree", f"{DATA}/dangling",
             f"{CONFIG}/missing", f"{CONFIG}/app.yaml/x", f"{DATA}/tree/sub/secret.txt", "/etc/hostname"]
    for p in paths:
        out[p] = {
            "stat": attempt(lambda p=p: st_fields(os.stat(p))),
            "lstat": attempt(lambda p=p: st_fields(os.lstat(p))),
            "exists": os.path.exists(p),
            "lexists": os.path.lexists(p),
            "isfile": os.path.isfile(p),
            "isdir": os.path.isdir(p),
            "islink": os.path.islink(p),
            "getsize": attempt(lambda p=p: os.path.getsize(p)),
            "getmtime": attempt(lambda p=p: os.path.getmtime(p)),
            "access": [os.access(p, m) for m in (os.F_OK, os.R_OK, os.W_OK, os.X_OK)],
            "readlink": attempt(lambda p=p: os.readlink(p)),
            "realpath": os.path.realpath(p),
        }
    out["stat_nofollow"] = st_fields(os.stat(f"{DATA}/link-a", follow_symlinks=False))
    out["bytes_stat"] = st_fields(os.stat(f"{CONFIG}/app.yaml".encode()))
    out["samefile"] = os.path.samefile(f"{DATA}/link-a", f"{DATA}/tree/a.txt")
    return out


@probe
def listings() -> dict:
    out: dict = {}
    out["listdir"] = os.listdir(f"{DATA}/tree")
    out["listdir_bytes"] = [n.decode() for n in os.listdir(f"{DATA}/tree".encode())]
    out["listdir_file"] = attempt(lambda: os.listdir(f"{CONFIG}/app.yaml"))
    out["listdir_missing"] = attempt(lambda: os.listdir(f"{DATA}/nope"))
    entries = []
    with os.scandir(DATA) as it:
        for e in it:
            entries.append([e.name, e.path, os.fspath(e), repr(e), attempt(e.is_dir), attempt(e.is_file),
                            e.is_symlink(), e.is_dir(follow_symlinks=False), attempt(lambda e=e: e.stat().st_size),
                            attempt(lambda e=e: e.stat(follow_symlinks=False).st_mode), e.inode(),
                            isinstance(e, os.PathLike)])
    out["scandir"] = sorted(entries)
    out["scandir_order"] = [e.name for e in os.scandir(f"{DATA}/tree")]
    out["walk"] = [[top, dirs, files] for top, dirs, files in os.walk(DATA)]
    walk = os.walk(f"{DATA}/link-tree", topdown=False, followlinks=True)
    out["walk_bottom_up_follow"] = [[top, sorted(dirs), sorted(files)] for top, dirs, files in walk]
    out["glob"] = sorted(glob.glob(f"{DATA}/tree/*"))
    out["glob_recursive"] = sorted(glob.glob(f"{DATA}/tree/**/*.txt", recursive=True))
    out["glob_hidden"] = sorted(glob.glob(f"{DATA}/tree/.*"))
    out["iglob"] = sorted(glob.iglob(f"{CONFIG}/app.*"))
    base = pathlib.Path(DATA)
    out["pathlib"] = {
        "read_text": (base / "tree" / "a.txt").read_text(),
        "read_bytes": (base / "tree" / "sub" / "deeper" / "c.bin").read_bytes().hex(),
        "open": (base / "tree" / "a.txt").open().read(),
        "exists": [(base / n).exists() for n in ("tree", "nope", "dangling", "link-tree")],
        "is_file": [(base / n).is_file() for n in ("tree", "tree/a.txt", "link-a")],
        "is_dir": [(base / n).is_dir() for n in ("tree", "tree/a.txt", "link-tree")],
        "is_symlink": [(base / n).is_symlink() for n in ("link-a", "tree")],
        "iterdir": sorted(str(p) for p in (base / "tree").iterdir()),
        "glob": sorted(str(p) for p in base.glob("tree/*.txt")),
        "rglob": sorted(str(p) for p in (base / "tree").rglob("*")),
        "stat": st_fields((base / "tree" / "a.txt").stat()),
        "resolve": str((base / "link-tree" / "a.txt").resolve()),
        "missing": attempt(lambda: (base / "nope").read_text()),
    }
    return out


@probe
def errors() -> dict:
    return {
        "missing": attempt(lambda: open(f"{CONFIG}/missing")),
        "missing_os_open": attempt(lambda: os.open(f"{CONFIG}/missing", os.O_RDONLY)),
        "directory": attempt(lambda: open(CONFIG)),
        "directory_binary": attempt(lambda: open(CONFIG, "rb")),
        "not_a_directory": attempt(lambda: open(f"{CONFIG}/app.yaml/x")),
        "stat_missing": attempt(lambda: os.stat(f"{CONFIG}/missing")),
        "message": attempt(lambda: str(open(f"{CONFIG}/missing").name)),
        "str_error": (lambda: [str(e) for e in [_catch(lambda: open(f"{CONFIG}/missing"))]])(),
        "filename": (lambda: [e.filename for e in [_catch(lambda: os.stat(f"{CONFIG}/missing"))]])(),
        "loop": attempt(lambda: open(f"{DATA}/loop")),
        "dangling": attempt(lambda: open(f"{DATA}/dangling")),
        "readlink_not_link": attempt(lambda: os.readlink(f"{CONFIG}/app.yaml")),
        "scandir_file": attempt(lambda: list(os.scandir(f"{CONFIG}/app.yaml"))),
        "bad_mode": attempt(lambda: open(f"{CONFIG}/app.yaml", "rw")),
        "closefd_false_with_name": attempt(lambda: open(f"{CONFIG}/app.yaml", closefd=False)),
    }


def _catch(fn):
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError("no error")


@probe
def permissions() -> dict:
    """Run as an unprivileged user: the pod's permission bits decide."""
    secret = f"{DATA}/tree/sub/secret.txt"
    return {
        "read": attempt(lambda: open(secret).read()),
        "os_open": attempt(lambda: os.open(secret, os.O_RDONLY)),
        "access": [os.access(secret, m) for m in (os.F_OK, os.R_OK, os.W_OK)],
        "stat_mode": stat.filemode(os.stat(secret).st_mode),
        "listdir_private": attempt(lambda: os.listdir(f"{DATA}/private")),
        "stat_in_private": attempt(lambda: os.stat(f"{DATA}/private/inner.txt")),
    }


@probe
def fd_consumers(ca: str) -> dict:
    """Code that hands the fd or its content to C, or parses files: all on the remote file."""
    out: dict = {}
    with open(f"{CONFIG}/binary.bin", "rb") as f:
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            out["mmap"] = [len(m), m[:4].hex(), m[-4:].hex(), m.find(b"\x10\x11\x12")]
        out["mmap_write_refused"] = attempt(lambda: mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_WRITE))
    with open(f"{CONFIG}/app.json") as f:
        out["json"] = json.load(f)
    import tomllib

    with open(f"{CONFIG}/app.toml", "rb") as f:
        out["tomllib"] = tomllib.load(f)
    parser = configparser.ConfigParser()
    out["configparser_read"] = parser.read(f"{CONFIG}/app.ini")
    out["configparser"] = {s: dict(parser[s]) for s in parser.sections()}
    with open(ca) as f:
        pem = f.read()
        ctx = ssl.create_default_context(cadata=pem)
        out["ssl_cadata"] = ctx.cert_store_stats()["x509_ca"]
        ctx2 = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx2.load_verify_locations(cafile=f"/proc/self/fd/{f.fileno()}")
        out["ssl_cafile_by_fd"] = ctx2.cert_store_stats()["x509_ca"]
    dest = os.path.join(os.environ.get("PROBE_LOCAL_DIR", "/tmp"), "copies")
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    shutil.copyfile(f"{CONFIG}/app.yaml", f"{dest}/copyfile.yaml")
    shutil.copy(f"{CONFIG}/app.yaml", f"{dest}/copy.yaml")
    shutil.copy2(f"{DATA}/tree/a.txt", f"{dest}/copy2.txt")
    shutil.copytree(f"{DATA}/tree", f"{dest}/tree", ignore=shutil.ignore_patterns("secret.txt"))
    out["copies"] = {
        "copyfile": open(f"{dest}/copyfile.yaml").read(),
        "copy_mode": stat.filemode(os.stat(f"{dest}/copy.yaml").st_mode),
        "copy2_mtime": os.stat(f"{dest}/copy2.txt").st_mtime_ns == os.stat(f"{DATA}/tree/a.txt").st_mtime_ns,
        "copytree": sorted(os.path.relpath(os.path.join(t, n), f"{dest}/tree")
                           for t, ds, fs in os.walk(f"{dest}/tree") for n in ds + fs),
        "copytree_c": open(f"{dest}/tree/sub/deeper/c.bin", "rb").read().hex(),
    }
    shutil.rmtree(dest)
    return out


# ---------------------------------------------------------------------------------------------- writing
@probe
def write_apis(tag: str) -> dict:
    out: dict = {}
    base = f"{DATA}/scratch/{tag}"
    os.makedirs(f"{base}/made/deeper")
    out["makedirs_again"] = attempt(lambda: os.makedirs(f"{base}/made/deeper"))
    os.makedirs(f"{base}/made/deeper", exist_ok=True)
    with open(f"{base}/w.txt", "w") as f:
        out["write_returns"] = f.write("hello\n")
        f.write("world\n")
    out["after_w"] = open(f"{base}/w.txt").read()
    with open(f"{base}/w.txt", "a") as f:
        out["append_tell"] = f.tell()
        f.write("appended\n")
    out["after_a"] = open(f"{base}/w.txt").read()
    with open(f"{base}/w.txt", "r+") as f:
        f.seek(0)
        f.write("HELLO")
        f.seek(0)
        out["r_plus_read"] = f.read()
    with open(f"{base}/w.txt", "r+b") as f:
        f.truncate(8)
    out["after_truncate"] = open(f"{base}/w.txt").read()
    out["exclusive"] = attempt(lambda: open(f"{base}/w.txt", "x"))
    with open(f"{base}/x.bin", "xb") as f:
        f.write(bytes(range(10)))
    with open(f"{base}/wplus.bin", "w+b") as f:
        f.write(b"abcdef")
        f.seek(1)
        out["w_plus_read"] = f.read(3).decode()
    with open(f"{base}/flushed.txt", "w") as f:
        f.write("flushed")
        f.flush()
        out["flushed_visible"] = open(f"{base}/flushed.txt").read()
    with open(f"{base}/w.txt", "a") as f:
        print("printed", file=f)
    fd = os.open(f"{base}/os.txt", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o640)
    out["os_write"] = [os.write(fd, b"via os.write"), os.lseek(fd, 0, os.SEEK_CUR)]
    out["os_fstat_size"] = os.fstat(fd).st_size
    os.close(fd)
    out["os_created"] = [open(f"{base}/os.txt").read(), stat.filemode(os.stat(f"{base}/os.txt").st_mode)]
    out["os_excl"] = attempt(lambda: os.open(f"{base}/os.txt", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    fd = os.open(f"{base}/os.txt", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"+tail")
    os.close(fd)
    out["os_append"] = open(f"{base}/os.txt").read()
    os.truncate(f"{base}/os.txt", 3)
    out["os_truncate"] = open(f"{base}/os.txt").read()
    with os.fdopen(os.open(f"{base}/fdopen.txt", os.O_CREAT | os.O_WRONLY, 0o644), "w") as f:
        f.write("through fdopen")
    out["fdopen"] = open(f"{base}/fdopen.txt").read()
    os.rename(f"{base}/x.bin", f"{base}/renamed.bin")
    os.replace(f"{base}/wplus.bin", f"{base}/renamed.bin")
    out["renamed"] = open(f"{base}/renamed.bin", "rb").read().decode()
    out["rename_missing"] = attempt(lambda: os.rename(f"{base}/nope", f"{base}/nope2"))
    pathlib.Path(f"{base}/pathlib.txt").write_text("pathlib write")
    pathlib.Path(f"{base}/pathlib.txt").rename(f"{base}/pathlib2.txt")
    out["pathlib_write"] = pathlib.Path(f"{base}/pathlib2.txt").read_text()
    pathlib.Path(f"{base}/pdir").mkdir(mode=0o750)
    out["pdir_mode"] = stat.filemode(os.stat(f"{base}/pdir").st_mode)
    pathlib.Path(f"{base}/pdir").rmdir()
    out["mkdir_exists"] = attempt(lambda: os.mkdir(f"{base}/made"))
    out["mkdir_no_parent"] = attempt(lambda: os.mkdir(f"{base}/nope/child"))
    out["rmdir_not_empty"] = attempt(lambda: os.rmdir(f"{base}/made"))
    out["rmdir_file"] = attempt(lambda: os.rmdir(f"{base}/w.txt"))
    out["remove_missing"] = attempt(lambda: os.remove(f"{base}/nope"))
    out["unlink_dir"] = attempt(lambda: os.unlink(f"{base}/made"))
    os.chmod(f"{base}/os.txt", 0o600)
    out["chmod"] = stat.filemode(os.stat(f"{base}/os.txt").st_mode)
    os.utime(f"{base}/os.txt", ns=(1_000_000_000, 2_000_000_000))
    out["utime"] = os.stat(f"{base}/os.txt").st_mtime_ns
    os.remove(f"{base}/os.txt")
    os.unlink(f"{base}/fdopen.txt")
    os.rmdir(f"{base}/made/deeper")
    out["write_to_read_only_fd"] = attempt(lambda: open(f"{base}/w.txt").write("x"))
    out["listing"] = sorted(os.listdir(base))
    out["contents"] = {n: open(f"{base}/{n}", "rb").read().decode()
                       for n in sorted(os.listdir(base)) if os.path.isfile(f"{base}/{n}")}
    out["sizes"] = {n: os.stat(f"{base}/{n}").st_size for n in sorted(os.listdir(base))}
    shutil.copytree(f"{base}/made", f"{base}/made-copy")
    shutil.rmtree(f"{base}/made")
    shutil.rmtree(f"{base}/made-copy")
    out["after_rmtree"] = sorted(os.listdir(base))
    return out


def _describe(path: str) -> dict:
    """What the pod's file system says about ``path``, read with the plainest calls (no fd, no pathlib)."""
    st = os.lstat(path)
    out = {"mode": stat.filemode(st.st_mode), "uid": st.st_uid, "gid": st.st_gid, "nlink": st.st_nlink}
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            out["content"] = f.read().decode()
    out["xattrs"] = attempt(lambda: {n: os.getxattr(path, n).decode() for n in sorted(os.listxattr(path))
                                     if n.startswith("user.")})
    return out


@probe
def describe(*paths: str) -> dict:
    return {p: attempt(lambda p=p: _describe(p)) for p in paths}


def _statvfs(st: os.statvfs_result) -> list:
    # The free counts move with whatever else writes to the disk; these do not.
    return [st.f_bsize, st.f_frsize, st.f_blocks, st.f_files, st.f_flag, st.f_namemax, st.f_fsid]


@probe
def meta_writes(tag: str) -> dict:
    """Write mode: ownership, hard links, FIFOs, xattrs, statvfs, FileIO and the fd forms, all in the pod."""
    out: dict = {}
    base = f"{DATA}/scratch/{tag}"
    os.makedirs(base)
    f = f"{base}/f.txt"
    with open(f, "w") as fh:
        fh.write("0123456789")
    os.symlink("f.txt", f"{base}/sym")
    os.chown(f, 65534, 65534)
    os.lchown(f"{base}/sym", 1, 1)
    out["chown"] = [os.stat(f).st_uid, os.stat(f).st_gid, os.lstat(f"{base}/sym").st_uid]
    shutil.chown(f, group=2)
    out["shutil_chown"] = os.stat(f).st_gid
    out["chown_missing"] = attempt(lambda: os.chown(f"{base}/nope", 1, 1))
    os.link(f, f"{base}/hard")
    pathlib.Path(f"{base}/hard2").hardlink_to(f)
    out["link"] = [os.stat(f).st_nlink, os.stat(f"{base}/hard").st_ino == os.stat(f).st_ino,
                   open(f"{base}/hard2").read()]
    out["link_exists"] = attempt(lambda: os.link(f, f"{base}/hard"))
    out["link_missing"] = attempt(lambda: os.link(f"{base}/nope", f"{base}/x"))
    os.link(f"{base}/sym", f"{base}/hard-sym", follow_symlinks=False)
    out["link_nofollow"] = stat.filemode(os.lstat(f"{base}/hard-sym").st_mode)
    os.mkfifo(f"{base}/fifo", 0o640)
    os.mknod(f"{base}/node", 0o600 | stat.S_IFREG)
    out["mkfifo"] = stat.filemode(os.lstat(f"{base}/fifo").st_mode)
    out["mknod"] = [stat.filemode(os.lstat(f"{base}/node").st_mode), os.lstat(f"{base}/node").st_size]
    out["mkfifo_exists"] = attempt(lambda: os.mkfifo(f"{base}/fifo"))
    out["setxattr"] = attempt(lambda: os.setxattr(f, "user.origin", b"pod"))
    out["getxattr"] = attempt(lambda: os.getxattr(f, "user.origin"))
    os.setxattr(f, "user.gone", b"x")
    os.removexattr(f, "user.gone")
    out["removexattr"] = attempt(lambda: os.getxattr(f, "user.gone"))
    out["xattr_create_exists"] = attempt(lambda: os.setxattr(f, "user.origin", b"y", os.XATTR_CREATE))
    out["statvfs"] = _statvfs(os.statvfs(base))
    out["disk_usage_total"] = shutil.disk_usage(base).total
    fd = os.open(f, os.O_RDWR)
    os.fchmod(fd, 0o604)
    os.fchown(fd, 3, 3)
    os.ftruncate(fd, 4)
    os.setxattr(fd, "user.by-fd", b"fd")
    out["by_fd_before_close"] = [stat.filemode(os.stat(f).st_mode), os.stat(f).st_uid, os.stat(f).st_size,
                                 os.getxattr(f, "user.by-fd"), sorted(os.listxattr(fd)),
                                 _statvfs(os.fstatvfs(fd)) == out["statvfs"]]
    os.chmod(fd, 0o644)
    os.chown(fd, 4, 4)
    os.truncate(fd, 2)
    os.removexattr(fd, "user.by-fd")
    os.close(fd)
    out["by_fd"] = [stat.filemode(os.stat(f).st_mode), os.stat(f).st_uid, open(f).read(), sorted(os.listxattr(f))]
    fd = os.open(f, os.O_RDONLY)
    os.fchmod(fd, 0o640)
    out["fchmod_read_only_fd"] = stat.filemode(os.stat(f).st_mode)
    out["ftruncate_read_only_fd"] = attempt(lambda: os.ftruncate(fd, 0))
    os.close(fd)
    with open(f"{base}/log.txt", "w") as fh:
        fh.write("first line\n")
    with open(f"{base}/log.txt", "a") as fh:
        fh.write("pending\n")
        fh.flush()
        os.ftruncate(fh.fileno(), 5)
        fh.write("+after")
    out["ftruncate_append"] = open(f"{base}/log.txt").read()
    with io.FileIO(f"{base}/fileio.bin", "w") as raw:
        raw.write(b"through FileIO")
    with io.FileIO(f"{base}/fileio.bin") as raw:
        out["fileio"] = [raw.read().decode(), type(raw).__name__, isinstance(raw, io.FileIO),
                         raw.name == f"{base}/fileio.bin"]
    with io.FileIO(f"{base}/opener.bin", "w", opener=lambda path, flags: os.open(path, flags, 0o600)) as raw:
        raw.write(b"the app's own opener")
    out["fileio_opener"] = [open(f"{base}/opener.bin").read(), stat.filemode(os.stat(f"{base}/opener.bin").st_mode)]
    out["fileio_x_exists"] = attempt(lambda: io.FileIO(f"{base}/fileio.bin", "x"))
    out["fileio_missing"] = attempt(lambda: io.FileIO(f"{base}/nope"))
    out["fileio_dir"] = attempt(lambda: io.FileIO(base))
    out["isinstance_open_raw"] = isinstance(open(f, "rb", buffering=0), io.FileIO)
    out["listing"] = sorted(os.listdir(base))
    return out


@probe
def meta_read_mode() -> dict:
    """Read mode: the reading calls answer from the pod; the changing calls of a pod path act where their
    siblings (os.chmod, os.mkdir) act; a change through an fd of a pod file is refused."""
    out: dict = {}
    a = f"{DATA}/tree/a.txt"
    out["statvfs"] = _statvfs(os.statvfs(DATA))
    out["fileio"] = attempt(lambda: io.FileIO(a).read().decode())
    siblings = {
        "chmod": lambda: os.chmod(a, 0o600),
        "mkdir": lambda: os.mkdir(f"{DATA}/tree/new"),
        "chown": lambda: os.chown(a, 1, 1),
        "lchown": lambda: os.lchown(a, 1, 1),
        "link": lambda: os.link(a, f"{DATA}/tree/hard"),
        "mkfifo": lambda: os.mkfifo(f"{DATA}/tree/fifo"),
        "mknod": lambda: os.mknod(f"{DATA}/tree/node"),
        "setxattr": lambda: os.setxattr(a, "user.x", b"x"),
        "removexattr": lambda: os.removexattr(a, "user.x"),
        "fileio_write": lambda: io.FileIO(f"{DATA}/tree/new.bin", "w"),
    }
    out["siblings"] = {name: attempt(fn) for name, fn in siblings.items()}
    fd = os.open(a, os.O_RDONLY)
    out["fd"] = {
        "fchmod": attempt(lambda: os.fchmod(fd, 0o600)),
        "fchown": attempt(lambda: os.fchown(fd, 1, 1)),
        "chmod_fd": attempt(lambda: os.chmod(fd, 0o600)),
        "ftruncate": attempt(lambda: os.ftruncate(fd, 0)),
        "setxattr_fd": attempt(lambda: os.setxattr(fd, "user.x", b"x")),
        "fstatvfs": _statvfs(os.fstatvfs(fd)) == out["statvfs"],
        "listxattr_fd": attempt(lambda: os.listxattr(fd)),
    }
    os.close(fd)
    out["chdir"] = attempt(lambda: os.chdir(f"{DATA}/tree"))
    out["cwd_unchanged"] = os.getcwd()
    return out


@probe
def chdir_remote() -> dict:
    """os.chdir into a pod directory: refused with a clear error (the working directory stays the laptop's)."""
    out: dict = {"before": os.getcwd()}
    try:
        os.chdir(f"{DATA}/tree")
    except OSError as exc:
        out["error"] = [type(exc).__name__, exc.errno, exc.filename, str(exc)]
    fd = os.open(f"{DATA}/tree", os.O_RDONLY)
    out["fchdir"] = attempt(lambda: os.fchdir(fd))
    out["chdir_fd"] = attempt(lambda: os.chdir(fd))
    os.close(fd)
    out["after"] = os.getcwd()
    local = os.environ.get("PROBE_LOCAL_DIR", "/tmp")
    os.chdir(local)
    out["local_chdir"] = os.getcwd() == os.path.realpath(local)
    return out


@probe
def meta_reads() -> dict:
    """The reading calls of the rest of the surface, in any mode: the pod's answers."""
    a = f"{DATA}/tree/a.txt"
    out: dict = {"statvfs": _statvfs(os.statvfs(DATA)), "disk_usage_total": shutil.disk_usage(DATA).total}
    with io.FileIO(a) as raw:
        out["fileio"] = [raw.read().decode(), raw.mode, type(raw).__name__, isinstance(raw, io.FileIO)]
    out["fileio_missing"] = attempt(lambda: io.FileIO(f"{DATA}/nope"))
    fd = os.open(a, os.O_RDONLY)
    out["fstatvfs"] = _statvfs(os.fstatvfs(fd))
    out["statvfs_fd"] = _statvfs(os.statvfs(fd))
    out["listxattr_fd"] = attempt(lambda: os.listxattr(fd))
    out["ftruncate_read_only"] = attempt(lambda: os.ftruncate(fd, 0))
    os.close(fd)
    return out


@probe
def link(src: str, dst: str) -> dict:
    return {"link": attempt(lambda: os.link(src, dst))}


@probe
def remove(path: str) -> dict:
    return {"remove": attempt(lambda: os.remove(path))}


def _globs() -> dict:
    tree = pathlib.Path(f"{DATA}/tree")
    return {
        "path_glob": sorted(str(p) for p in tree.glob("*.txt")),
        "path_glob_sub": sorted(str(p) for p in tree.glob("sub/*")),
        "path_rglob": sorted(str(p) for p in tree.rglob("*")),
        "glob": sorted(glob.glob(f"{DATA}/tree/**/*.txt", recursive=True)),
    }


@probe
def globs() -> dict:
    return _globs()


# Where the standard library keeps copies of os functions taken at its import: 3.13's glob (pathlib.Path.glob
# goes through it) and 3.10's pathlib.
COPIES = {
    ("glob", "_StringGlobber"): {"lstat": "os.lstat", "scandir": "os.scandir"},
    ("pathlib", "_NormalAccessor"): {
        **{name: f"os.{name}" for name in ("stat", "listdir", "scandir", "chmod", "mkdir", "unlink", "link",
                                           "rmdir", "rename", "replace", "symlink", "readlink")},
        "open": "io.open", "realpath": "posixpath.realpath"},
}


@probe
def aliases() -> dict:
    """Each copy is its source while the shim is installed and after it is uninstalled, and globbing answers
    from the pod exactly while it is installed. A ``.pth`` file may have imported glob and pathlib before the
    shim and saved what they held."""
    from mirror_py import shim

    rows = []
    for (module, owner_name), names in COPIES.items():
        owner = getattr(sys.modules.get(module), owner_name, None)
        for name, source in names.items():
            if owner is not None and name in vars(owner):
                rows.append((owner, f"{owner_name}.{name}", name, source))

    def follows() -> bool:
        def value(owner, name):
            raw = vars(owner)[name]
            return raw.__func__ if isinstance(raw, staticmethod) else raw

        return all(value(owner, name) is getattr(sys.modules[source.rpartition(".")[0]], source.rpartition(".")[2])
                   for owner, _, name, source in rows)

    saved = getattr(sys.modules.get("glob"), "_probe_saved", None)
    out: dict = {"imported_before_the_shim": saved is not None,
                 "aliases": sorted(f"{owner.__module__}.{key}" for owner, key, _, _ in rows),
                 "installed": [shim.active(), follows(), attempt(_globs)]}
    shim.uninstall()
    out["uninstalled"] = [follows(), attempt(_globs)]
    if saved is not None:
        out["restored_identically"] = all(vars(owner)[name] is saved[key] for owner, key, name, _ in rows)
    shim.install()
    out["reinstalled"] = [follows(), attempt(_globs)]
    return out


@probe
def cleanup(tag: str) -> dict:
    path = f"{DATA}/scratch/{tag}"
    if os.path.isfile(path):
        os.remove(path)
    shutil.rmtree(path, ignore_errors=True)
    return {"left": sorted(os.listdir(f"{DATA}/scratch"))}


@probe
def read_file(path: str) -> dict:
    return {"content": attempt(lambda: open(path).read())}


# ----------------------------------------------------------------------------------------- rules, defaults
@probe
def defaults(local_file: str) -> dict:
    """The app's own code, venv and working directory stay local; the pod's files are remote."""
    import email.message  # noqa: F401 - imports keep working
    import http.client  # noqa: F401

    here = os.path.abspath(__file__)
    return {
        "shim_active": shim_active(),
        "own_source": open(here).read(100),
        "cwd_file": attempt(lambda: open(local_file).read()),
        "cwd_relative": attempt(lambda: open(os.path.basename(local_file)).read()),
        "venv_cfg": attempt(lambda: os.path.exists(os.path.join(sys.prefix, "pyvenv.cfg"))),
        "stdlib": os.path.isfile(os.path.join(os.path.dirname(os.__file__), "os.py")),
        "proc_self_pid": int(open("/proc/self/stat").read().split()[0]) == os.getpid(),
        "hostname": open("/etc/hostname").read().strip(),
        "hosts_has_pod": "pod.internal" in open("/etc/hosts").read() or "files" in open("/etc/hosts").read(),
        "pod_config": open(f"{CONFIG}/app.yaml").read(),
        "tempdir": attempt(lambda: _tempfile_roundtrip()),
        "token": attempt(lambda: open("/run/secrets/kubernetes.io/serviceaccount/token").read()),
    }


def _tempfile_roundtrip() -> str:
    import tempfile

    with tempfile.NamedTemporaryFile("w+", delete=True) as f:
        f.write("temp")
        f.flush()
        f.seek(0)
        return f.read()


@probe
def rules_probe() -> dict:
    return {
        "not_found": attempt(lambda: open(f"{CONFIG}/app.ini").read()),
        "not_found_exists": os.path.exists(f"{CONFIG}/app.ini"),
        "local_rule": attempt(lambda: open("/etc/hostname").read().strip()),
        "mapped": attempt(lambda: open("/config/app.yaml").read()),
        "mapped_listing": attempt(lambda: sorted(os.listdir("/config"))),
        "still_remote": attempt(lambda: open(f"{CONFIG}/app.json").read()),
    }


@probe
def write_file(path: str, content: str) -> dict:
    def write() -> int:
        with open(path, "w") as f:
            return f.write(content)

    return {"write": attempt(write)}


def main() -> None:
    name, *args = sys.argv[1:]
    print(json.dumps(PROBES[name](*args), default=str))


if __name__ == "__main__":
    main()
