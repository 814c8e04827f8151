"""A session's ``info`` as the lines ``mirror-py session status`` and ``%mirror status`` print."""

from __future__ import annotations

from typing import Any


def _age(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _destination(row: dict) -> str:
    ip, port = row.get("address", "?"), row.get("port", "?")
    where = f"[{ip}]:{port}" if ":" in str(ip) else f"{ip}:{port}"
    if row.get("name"):
        where += f" ({row['name']})"
    return where if row.get("proto", "tcp") == "tcp" else f"{row['proto']} {where}"


def render(info: dict) -> list[str]:
    """The lines of a status report; the first starts with ``target``."""
    agent = info.get("agent") or {}
    c = info.get("counters") or {}
    lines = [f"target {info.get('target')}"]
    pod = info.get("pod")
    if pod:
        lines.append(f"pod         {pod.get('namespace')}/{pod.get('name')}, container {pod.get('container')}")
    lines.append(f"agent       {info.get('agent_mode')} mode, python {agent.get('python')} (pid {agent.get('pid')}), "
                 f"up {_age(c.get('agent_age'))}; reconnects {c.get('reconnects', 0)}")
    lines.append(f"session     pid {info.get('pid')}, {info.get('mode')}, up {_age(c.get('age'))}")
    routes = c.get("connections") or []
    if routes:
        lines.append("connections")
        width = max(len(_destination(r)) for r in routes)
        for row in routes:
            lines.append(f"  {_destination(row).ljust(width)}  -> {row['to']:<5}  {row['count']:>6}  {row['rule']}")
        if c.get("other_connections"):
            lines.append(f"  (and {c['other_connections']} to destinations not kept)")
    else:
        lines.append("connections none yet")
    b = c.get("bytes") or {}
    lines.append(f"bytes       {_size(b.get('to_pod', 0))} to the pod, {_size(b.get('from_pod', 0))} from it")
    d = c.get("dns") or {}
    lines.append(f"dns         {d.get('lookups', 0)} lookups, {d.get('cache_hits', 0)} answered from the cache")
    f = c.get("files") or {}
    lines.append(f"files       {f.get('opened_for_reading', 0)} opened for reading, {f.get('opened_for_writing', 0)} "
                 f"for writing in the target ({_size(f.get('bytes_read', 0))} read, "
                 f"{_size(f.get('bytes_written', 0))} written)")
    i = c.get("incoming") or {}
    lines.append(f"incoming    {i.get('mirrored', 0)} mirrored, {i.get('stolen', 0)} stolen, "
                 f"{i.get('reverse_forwarded', 0)} through reverse port-forwards")
    errors = c.get("errors") or {}
    lines.append("errors      " + (", ".join(f"{k} {v}" for k, v in sorted(errors.items())) if errors else "none"))
    return lines[:1] + ["  " + line for line in lines[1:]]
