"""Confinement checks of the agent's file operations, runnable on any Python the agent supports (3.9+).

``run(base)`` builds a hostile tree under ``base`` — a root with symlinks to ``/``, to ``../..``, to absolute
paths, loops — next to a directory "outside" the root, serves it with ``mirror_py_agent.files`` and returns
what every operation answered as JSON-able data. The pytest module runs it in the test interpreter and in
the oldest supported Python and checks the answers; the script form prints them (``python FILE BASE``).
"""

import errno
import json
import os
import sys


def _build(base):
    root = os.path.join(base, "root")
    outside = os.path.join(base, "outside")
    for d in (root, outside, os.path.join(root, "etc"), os.path.join(root, "data"),
              os.path.join(root, "nested", "deep")):
        os.makedirs(d, exist_ok=True)
    files = {
        os.path.join(root, "etc", "secret.txt"): "inside",
        os.path.join(root, "data", "file.txt"): "data",
        os.path.join(outside, "secret"): "OUTSIDE",
    }
    for path, text in files.items():
        with open(path, "w") as f:
            f.write(text)
    links = {
        "link_root": "/",
        "link_up": "../../..",
        "abs_etc": "/etc",
        "esc": "../outside/secret",
        "abs_outside": outside + "/secret",
        "loop1": "loop2",
        "loop2": "loop1",
        "dir_link": "data",
        "dangling_abs": "/created_through_link",
        "nested/deep/up": "../../../../..",
    }
    for name, target in links.items():
        os.symlink(target, os.path.join(root, name))
    return root, outside


def _try(fn):
    try:
        return {"ok": fn()}
    except OSError as exc:
        return {"err": errno.errorcode.get(exc.errno, str(exc.errno))}


def run(base):
    from mirror_py_agent import files

    root, outside = _build(base)
    files.set_root(root)
    c = files.call

    def read(path):
        reply = c({"fn": "open", "path": path, "flags": os.O_RDONLY})
        return reply["data"].decode()

    out = {}
    out["read_through_link_root"] = _try(lambda: read("/link_root/etc/secret.txt"))
    out["read_through_link_up"] = _try(lambda: read("/link_up/etc/secret.txt"))
    out["read_outside_by_dotdot"] = _try(lambda: read("/../../outside/secret"))
    out["read_outside_by_link_up"] = _try(lambda: read("/link_up/outside/secret"))
    out["read_outside_by_relative_link"] = _try(lambda: read("/esc"))
    out["read_outside_by_absolute_link"] = _try(lambda: read("/abs_outside"))
    out["read_abs_etc"] = _try(lambda: read("/abs_etc/secret.txt"))
    out["read_nested_up"] = _try(lambda: read("/nested/deep/up/data/file.txt"))
    out["read_dir_link"] = _try(lambda: read("/dir_link/file.txt"))
    out["read_host_hostname"] = _try(lambda: read("/link_root/etc/hostname"))
    out["loop"] = _try(lambda: read("/loop1"))
    out["notdir"] = _try(lambda: read("/data/file.txt/x"))
    out["stat_root_via_up"] = _try(lambda: c({"fn": "stat", "path": "/link_up"})[1] == os.stat(root).st_ino)
    out["lstat_link"] = _try(lambda: oct(c({"fn": "stat", "path": "/link_root", "follow": False})[0] & 0o170000))
    out["readlink"] = _try(lambda: c({"fn": "readlink", "path": "/link_up"}))
    out["realpath_up"] = _try(lambda: c({"fn": "realpath", "path": "/link_up/data/../etc"}))
    out["realpath_missing"] = _try(lambda: c({"fn": "realpath", "path": "/nope/../data/x/y"}))
    out["realpath_abs_outside"] = _try(lambda: c({"fn": "realpath", "path": "/abs_outside"}))
    out["listdir_link_root"] = _try(lambda: sorted(c({"fn": "listdir", "path": "/link_root"})))
    out["listdir_dotdot"] = _try(lambda: sorted(c({"fn": "listdir", "path": "/../.."})))
    entries = {e[0]: e for e in c({"fn": "scandir", "path": "/"})}
    out["scandir_link_root_target_is_root"] = entries["link_root"][3][1] == os.stat(root).st_ino
    out["scandir_esc_target"] = errno.errorcode.get(entries["esc"][3], entries["esc"][3])
    # Writes land inside the root, whatever the path says.
    c({"fn": "mkdir", "path": "/link_up/made", "mode": 0o755})
    out["mkdir_inside"] = os.path.isdir(os.path.join(root, "made"))
    reply = c({"fn": "open", "path": "/dangling_abs", "flags": os.O_WRONLY | os.O_CREAT, "keep": True})
    c({"fn": "write", "h": reply["h"], "off": 0, "data": b"created"})
    c({"fn": "close", "h": reply["h"]})
    out["create_through_dangling_link"] = [
        os.path.exists(os.path.join(root, "created_through_link")),
        os.path.exists("/created_through_link"),
    ]
    c({"fn": "rename", "src": "/data/file.txt", "dst": "/link_up/../moved.txt"})
    out["rename_inside"] = os.path.exists(os.path.join(root, "moved.txt"))
    c({"fn": "symlink", "target": "/", "path": "/link_up/newlink"})
    out["symlink_inside"] = os.readlink(os.path.join(root, "newlink"))
    out["unlink_outside_by_link"] = _try(lambda: c({"fn": "unlink", "path": "/link_up/outside/secret"}))
    out["outside_untouched"] = open(os.path.join(outside, "secret")).read()
    out["rmdir_via_link"] = _try(lambda: c({"fn": "rmdir", "path": "/link_root/made"}))
    out["made_removed"] = not os.path.exists(os.path.join(root, "made"))
    out["truncate_outside"] = _try(lambda: c({"fn": "truncate", "path": "/abs_outside", "length": 0}))
    out["chmod_outside"] = _try(lambda: c({"fn": "chmod", "path": "/esc", "mode": 0o600}))
    out["outside_mode"] = oct(os.stat(os.path.join(outside, "secret")).st_mode & 0o777)
    # A hard link's existing file is resolved inside the root: no second name for a file outside it.
    out["link_outside_by_relative_link"] = _try(lambda: c({"fn": "link", "src": "/esc", "dst": "/hard"}))
    out["link_outside_by_absolute_link"] = _try(lambda: c({"fn": "link", "src": "/abs_outside", "dst": "/hard"}))
    out["link_outside_by_dotdot"] = _try(lambda: c({"fn": "link", "src": "/../../outside/secret", "dst": "/hard"}))
    c({"fn": "link", "src": "/link_up/etc/secret.txt", "dst": "/link_root/hard"})
    out["link_inside"] = os.stat(os.path.join(root, "hard")).st_ino == os.stat(os.path.join(root, "etc",
                                                                                             "secret.txt")).st_ino
    c({"fn": "link", "src": "/esc", "dst": "/hard_symlink", "follow": False})
    out["link_nofollow_is_the_symlink"] = os.readlink(os.path.join(root, "hard_symlink"))
    ids = {"uid": os.getuid(), "gid": os.getgid()}
    out["chown_outside"] = _try(lambda: c({"fn": "chown", "path": "/esc", **ids}))
    out["setxattr_outside"] = _try(lambda: c({"fn": "setxattr", "path": "/abs_outside", "name": "user.x",
                                              "data": b"x"}))
    out["removexattr_outside"] = _try(lambda: c({"fn": "removexattr", "path": "/esc", "name": "user.x"}))
    out["statvfs_outside"] = _try(lambda: c({"fn": "statvfs", "path": "/abs_outside"}))
    out["statvfs_inside"] = _try(lambda: len(c({"fn": "statvfs", "path": "/link_up/etc"})))
    c({"fn": "mknod", "path": "/link_up/fifo", "mode": 0o010640, "umask": 0o022})
    out["mkfifo_inside"] = oct(os.lstat(os.path.join(root, "fifo")).st_mode)
    out["outside_listing"] = sorted(os.listdir(outside))
    files.set_root("/")
    return out


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    print(json.dumps(run(sys.argv[1])))
