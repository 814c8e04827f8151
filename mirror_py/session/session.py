"""A mirror-py session: one agent channel, the shim RPC server and the relay endpoints.

The session is a process of its own (the ``mirror-py exec`` CLI is one): its asyncio loop does every byte of
relaying, so the app's interpreter never runs session code and the relaying runs on another core.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from typing import Any, Callable

import mirror_py_agent
from mirror_py_agent import bootstrap

from .. import config as config_mod
from .. import env_families, start_clock
from ..console import TRANSIENT
from ..errors import MirrorError
from ..forward.discover import target_key
from ..transport import local as local_transport
from ..transport.channel import Channel
from ..transport.process import ProcessChannel
from ..transport.warm import WarmConnection
from . import files as session_files
from . import incoming as session_incoming
from .agent_link import AgentLink, RemoteError
from .connects import CONNECT_BOUND, Connects
from .counters import SessionCounters
from .dns_cache import DnsCache
from .fs_cache import MetadataCache
from .relays import (
    TcpRelayListener,
    UdpRelay,
    _key,
    app_socket_open,
    family_of,
    open_udp_doors,
    open_udp_relay,
)
from .repeats import RepeatLimiter
from .rpc_server import RpcError, RpcServer

log = logging.getLogger("mirror_py.session")
RECONNECT_FIRST_DELAY = 0.25
RECONNECT_MAX_DELAY = 2.0  # a target that is back is used again within about 2 s
RECONNECT_REPEAT_EVERY = 30.0  # an unchanged reconnect failure is said again at most this often
progress = logging.getLogger("mirror_py.progress")  # shown at default verbosity: what mirror-py chose

LIB_DIR = os.path.dirname(os.path.dirname(os.path.abspath(mirror_py_agent.__file__)))


def _shim_dir() -> str:
    import sitecustomize_shim

    return os.path.dirname(os.path.abspath(sitecustomize_shim.__file__))


def _failure_text(exc: BaseException) -> str:
    """A reconnect failure in one line: mirror-py's and the system's errors speak for themselves; anything else
    (a bug, a library's surprise) is named by its type so that it can be reported."""
    if isinstance(exc, (MirrorError, RemoteError, OSError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc} (unexpected; run with -v for details)"


def _resources(agent: config_mod.AgentConfig) -> dict:
    """The agent pod's container ``resources`` from the ``agent.*_request``/``*_limit`` keys."""
    from ..kube.placement import agent_resources

    return agent_resources(agent.cpu_request, agent.memory_request, agent.cpu_limit, agent.pod_memory_limit())


class Session:
    def __init__(self, cfg: config_mod.Config) -> None:
        self.cfg = cfg
        self.link: AgentLink | None = None
        self.listener: TcpRelayListener | None = None
        self.rpc: RpcServer | None = None
        self.dir: str | None = None
        self.remote_env: dict[str, str] = {}
        self._kept_noted = False  # the note about variables kept on the laptop is said once per session
        self.kept_note: str | None = None
        self.udp_relays: dict[tuple[str, int], UdpRelay] = {}  # by relay address
        self.udp_by_app: dict[tuple[str, int], UdpRelay] = {}  # the same relays by the app socket's address
        self.udp_doors: dict[int, asyncio.DatagramTransport] = {}
        self.target_description = ""
        self.mode = "exec"  # how the session serves: exec, or daemon.serve's mode; only daemons are shared
        self.counters = SessionCounters()
        self.pod: dict | None = None  # the Kubernetes pod and container the target resolved to
        self.placement: Any = None  # Kubernetes agent placement, cleaned up on close
        self.incoming = session_incoming.Incoming(self)
        self._closing = False
        self._supervisor: asyncio.Future | None = None
        self.connects = Connects(self._link, lambda: self.listener)
        dns = cfg.network.dns
        self.dns_cache = DnsCache(dns.cache, dns.cache_ttl, dns.cache_negative_ttl)
        self.fs_cache = MetadataCache(cfg.fs.metadata_cache)
        self._dns_watch: asyncio.Future | None = None
        self._dns_watched: AgentLink | None = None  # the link whose resolver files are being watched

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self._connect_agent()
        self.incoming.attach(self.link)
        self.listener = TcpRelayListener(self.link.mux)
        await self.listener.start()
        self.udp_doors = await open_udp_doors(self.udp_by_app)
        runtime = os.environ.get("XDG_RUNTIME_DIR", "")
        base = runtime if runtime and os.access(runtime, os.W_OK) else None
        self.dir = tempfile.mkdtemp(prefix="mirror-py-", dir=base)  # mode 0700
        await self.connects.start(os.path.join(self.dir, "connect.sock"))
        self.rpc = RpcServer(os.path.join(self.dir, "session.sock"), self._handlers(), self.counters)
        await self.rpc.start()
        self._supervisor = asyncio.ensure_future(self._supervise())

    async def _connect_agent(self) -> None:
        """Starts an agent and only then makes it the session's link (and its placement the session's).

        During a reconnect, requests that arrive meanwhile fail at once on the old, failed link: they must not
        reach an agent that has not said hello yet (they would be lost) or that has not yet entered the target's
        namespaces (they would run in the wrong place). An attempt that fails cleans up what it placed."""
        path = self.cfg.target.path
        env: dict | None = None
        placed = None
        if path and local_transport.is_local(path):
            target = local_transport.resolve(path)
            channel, env_args = self._local_channel(target)
            link = await self._start_agent(channel)
            if target.root_pid is not None:
                env = await self._place_rooted(link, target.root_pid)
            elif self.cfg.env.enabled and env_args is not None:
                try:
                    env = await link.request("environ", env_args)
                except RemoteError as exc:
                    log.warning("could not read the target's environment: %s", exc.message)
        else:
            link, placed, env = await self._start_kube(path)
        old, self.link, self.placement = self.link, link, placed
        self.counters.agent_changed(old)
        self.dns_cache.flush()  # a new agent may be in another pod, with other names
        if env is not None:
            self.remote_env = env

    async def _supervise(self) -> None:
        """Keeps the session alive across a lost agent: a dropped channel, a killed agent, a deleted or replaced
        pod. Open tunneled sockets are reset (their far ends are gone); a new agent is started, the target
        re-resolved, incoming subscriptions restored, and new operations work again."""
        while not self._closing:
            assert self.link is not None
            await self.link.closed.wait()
            if self._closing:
                return
            progress.warning("lost the agent (%s); reconnecting", self.link.failure)
            try:
                await self.link.close()
            except Exception:
                log.debug("closing the lost link failed", exc_info=True)
            delay = RECONNECT_FIRST_DELAY
            failures = RepeatLimiter(RECONNECT_REPEAT_EVERY)
            while not self._closing:
                try:
                    await self._reconnect_once()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # anything: a supervisor that dies leaves the session dead for good
                    text = _failure_text(exc)
                    if failures.should_say(text):
                        held = failures.take_held()
                        what = f"reconnect still failing after {held} more attempts" if held else "reconnect failed"
                        progress.warning("%s: %s; retrying every %.0f s at most", what, text, RECONNECT_MAX_DELAY)
                    if not isinstance(exc, (MirrorError, RemoteError, OSError)):
                        log.debug("unexpected reconnect failure", exc_info=True)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX_DELAY)
                    continue
                self.counters.reconnects += 1
                progress.warning("reconnected to %s", self.target_description)
                break

    async def _reconnect_once(self) -> None:
        """One attempt: a new agent, then what the old one held (the old placement removed, UDP sockets and
        incoming subscriptions restored). Raises whatever went wrong; the supervisor reports and retries."""
        old = self.placement
        await self._connect_agent()
        if old is not None and old is not self.placement:
            await asyncio.to_thread(old.close)
        assert self.link is not None and self.listener is not None
        try:
            self.listener.mux = self.link.mux
            await self._restore_udp(self.link)
            await self.incoming.restore(self.link)
        except BaseException:
            await self.link.close()  # the next attempt starts a fresh agent: this one must not linger
            raise

    async def _start_agent(self, channel: Channel, pipelined: Any = None) -> AgentLink:
        """A started agent; ``pipelined`` (link -> awaitable) is sent behind its hello (AgentLink.start)."""
        self.target_description = channel.description
        progress.info("streaming the agent to %s", self.target_description, extra=TRANSIENT)
        started = asyncio.get_running_loop().time()
        link = AgentLink(channel, self.cfg.agent.startup_timeout, self.cfg.agent.keepalive_interval,
                         self.cfg.agent.memory_budget)
        hello = await link.start(pipelined)
        progress.info("agent ready in %s (python %s, %.1f s)", self.target_description, hello.info.get("python"),
                      asyncio.get_running_loop().time() - started)
        return link

    def _local_channel(self, target: local_transport.LocalTarget) -> tuple[Channel, dict | None]:
        # A target with its own default (pid/: mirror-py's interpreter, on this machine) keeps it unless the user
        # chose an interpreter; the choice is then a command on this machine too, never one of the target's.
        chosen = "python" in self.cfg.agent.model_fields_set
        python = self.cfg.agent.python if chosen or target.python is None else target.python
        argv = target.agent_argv(bootstrap.command(python))
        channel = ProcessChannel(argv, target.describe(), python)
        return channel, ({"pid": target.env_pid} if target.env_pid is not None else None)

    async def _place_rooted(self, link: AgentLink, pid: int) -> dict | None:
        """Has an agent that runs outside the target's mount namespace reach its files, environment and
        resolver files through /proc/<pid>; the target's environment, or None when env is off."""
        try:
            placed = await link.request("place", {"pid": pid, "enter": [], "environ": self.cfg.env.enabled,
                                                  "resolver": "root"})
        except RemoteError as exc:
            await link.close()
            raise MirrorError(f"the agent could not reach {link.description}: {exc.message}") from None
        return placed.get("environ") if self.cfg.env.enabled else None

    async def _start_kube(self, path: str | None) -> tuple[AgentLink, Any, dict | None]:
        """(link, placement, the target's environment or None) for a Kubernetes target, or targetless."""
        from ..kube import api as kube_api
        from ..kube import targets

        t, agent = self.cfg.target, self.cfg.agent
        ref = targets.parse(path) if path else None
        # No request waits longer than the start may take (a server that accepts and never answers).
        kube = await asyncio.to_thread(kube_api.load, t.kubeconfig, t.context, t.namespace,
                                       min(t.request_timeout, agent.startup_timeout))
        timeout = agent.startup_timeout
        # The exec stream's connection (TCP, TLS) is made while the target is looked up, not after: its
        # connect is on the wire before the first lookup (transport/warm.py). Dropped if nothing takes it.
        kube.warm = WarmConnection(kube.configuration, timeout)
        kube.warm.start()
        await asyncio.sleep(0)
        try:
            return await self._start_kube_target(kube, ref)
        finally:
            kube.warm.close()

    async def _start_kube_target(self, kube: Any, ref: Any) -> tuple[AgentLink, Any, dict | None]:
        from ..kube import placement, targets

        agent = self.cfg.agent
        timeout = agent.startup_timeout
        if ref is None:
            placed = await placement.targetless_mode(kube, agent.namespace or kube.namespace, agent.python,
                                                     agent.image, timeout, _resources(agent))
            return await self._start_placed(placed)
        resolved = await asyncio.to_thread(targets.resolve, kube, ref)
        self.incoming.probes = resolved.probes
        self.pod = {"namespace": resolved.namespace, "name": resolved.pod, "container": resolved.container}
        progress.info("target %s: pod %s/%s, container %r (chosen by %s)", ref, resolved.namespace, resolved.pod,
                      resolved.container, resolved.container_choice)
        mode = agent.mode
        if mode in ("auto", "exec"):
            try:
                return await self._start_placed(placement.exec_mode(kube, resolved, agent.python, timeout))
            except MirrorError as exc:
                if mode == "exec" or "has no" not in str(exc) or "to run the agent" not in str(exc):
                    raise
                progress.info("the target container has no %s: using an ephemeral agent container instead",
                              agent.python)
            mode = "ephemeral"
        if mode == "ephemeral":
            needs = placement.AgentNeeds(incoming=self.cfg.network.incoming.mode,
                                         target_process=self.cfg.env.enabled or self.cfg.fs.mode != "local")
            placed = await placement.ephemeral_mode(kube, resolved, agent.python, agent.image, timeout, needs)
        else:
            placed = await placement.job_mode(kube, resolved, agent.python, agent.image, timeout,
                                              _resources(agent))
        return await self._start_placed(placed)

    async def _start_placed(self, placed: Any) -> tuple[AgentLink, Any, dict | None]:
        """Starts the agent on a placement and has it reach the target; on failure both are cleaned up."""
        link: AgentLink | None = None
        try:
            # What the placement asks first (the target's environment, entering its namespaces) travels with
            # the hello: one round trip, not two.
            link = await self._start_agent(placed.channel, placed.after_hello)
            assert link.pipelined is not None
            try:
                env = await link.pipelined
            except RemoteError as exc:
                raise MirrorError(f"the {placed.mode} agent could not reach the target: {exc.message}") from None
            await self._check_steal(link, placed.mode)
        except BaseException:
            if link is not None:
                await link.close()
            await asyncio.to_thread(placed.close)
            raise
        return link, placed, (env if self.cfg.env.enabled else None)

    async def _check_steal(self, link: AgentLink, mode: str) -> None:
        """A session that will steal, with an agent of ``agent.image``, fails at its start when that image has
        no iptables (the default python:3.12-slim has none): not at the app's first listening port, after it
        started, with the target keeping its traffic."""
        if self.cfg.network.incoming.mode != "steal" or mode not in ("ephemeral", "job", "targetless"):
            return
        if "incoming" not in (link.hello.capabilities if link.hello is not None else ()):
            return
        missing = (await link.request("incoming_check", {"mode": "steal"})).get("missing") or []
        if "iptables" in missing:
            image = self.cfg.agent.image
            raise MirrorError(f"network.incoming.mode steal needs an iptables command in the agent's image, and "
                              f"{image} (agent.image) has none (the official python images ship none): build "
                              "k8s/Dockerfile.agent (python:3.12-slim plus iptables) into a registry your cluster "
                              "pulls from and set agent.image (--agent-image), or use --incoming mirror")
        if "CAP_NET_ADMIN" in missing:
            raise MirrorError(f"network.incoming.mode steal needs CAP_NET_ADMIN, which the {mode} agent does not "
                              "hold (a non-root agent holds no capabilities: a pod-level runAsUser applies to it "
                              "too); use --incoming mirror, or run the target's pod as root")

    async def close(self) -> None:
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        if self._dns_watch is not None:
            self._dns_watch.cancel()
        await self.incoming.close()
        if self.rpc is not None:
            self.rpc.close()
        self.connects.close()
        if self.listener is not None:
            self.listener.close()
        for relay in list(self.udp_relays.values()):
            relay.close()
        for door in self.udp_doors.values():
            door.close()
        if self.link is not None:
            await self.link.close()
        if self.placement is not None:
            await asyncio.to_thread(self.placement.close)
            self.placement = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    async def __aenter__(self) -> Session:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------------------------------- the app
    def app_environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """The environment for an interposed process: the target's variables merged by the env rules, plus
        what the shim needs to find this session."""
        assert self.rpc is not None
        env = config_mod.merge_environment(base, self.remote_env, self.cfg.env)
        kept = config_mod.target_variables(self.remote_env, self.cfg.env)[1]
        self.kept_note = env_families.note(kept) if kept else None
        if self.kept_note and not self._kept_noted:
            self._kept_noted = True
            log.warning("%s", self.kept_note)
        shim = _shim_dir()
        old = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = shim + (os.pathsep + old if old else "")
        env["MIRROR_PY_SESSION"] = self.rpc.path
        env["MIRROR_PY_SHIM_LIB"] = LIB_DIR
        env["MIRROR_PY_SHIM_SETTINGS"] = json.dumps(config_mod.shim_settings(self.cfg))
        return env

    # ---------------------------------------------------------------------------------------- handlers
    def _handlers(self) -> dict:
        return {
            "connect": self._connect,
            "connect_info": self._connect_info,
            "connect_outcome": self._connect_outcome,
            "udp": self._udp,
            "release": self._release,
            "dns": self._dns,
            "fs": self._fs,
            "info": self._info,
            "listens": self._listens,
            "routes": self._routes,
            **self.incoming.handlers(),
        }

    def _link(self) -> AgentLink:
        assert self.link is not None
        if self.link.failure is not None:
            raise RpcError("ECONNRESET", self.link.failure)
        return self.link

    async def _connect(self, req: dict) -> dict:
        link = self._link()
        assert self.listener is not None
        local = req["local"]
        relay_address = self.listener.address_for(str(local[0]))
        sid = link.new_stream_id()
        self.listener.expect((str(local[0]), int(local[1])), sid)
        timeout = req.get("timeout")
        timed = isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0
        # Bounded whatever the agent does: by the app's timeout (the agent enforces it too, and the shim stops
        # waiting when it expires), else a little beyond the kernel's own connect timeout.
        args = {"sid": sid, "host": str(req["host"]), "port": int(req["port"]), "timeout": timeout if timed else None}
        self.counters.count_connect(args["host"], args["port"], req.get("name"), req.get("why"))
        try:
            res = await link.request("connect", args, opens_stream=sid, timeout=timeout if timed else CONNECT_BOUND)
        except (RemoteError, asyncio.TimeoutError) as exc:
            self.listener.pending.pop(_key(str(local[0]), int(local[1])), None)
            link.mux.streams.pop(sid, None)
            if isinstance(exc, RemoteError):
                raise RpcError(exc.name, exc.message) from None
            if timed:
                raise RpcError("TIMEOUT", "timed out") from None
            raise RpcError("ETIMEDOUT", os.strerror(errno.ETIMEDOUT)) from None
        return {"relay": list(relay_address), "peer": res["peer"], "sock": res["sock"]}

    async def _connect_info(self, req: dict) -> dict:
        """Where a non-blocking connect goes (session/connects.py): asked once per process."""
        return self.connects.info()

    async def _connect_outcome(self, req: dict) -> dict:
        return self.connects.outcome((str(req["local"][0]), int(req["local"][1])))

    async def _udp(self, req: dict) -> dict:
        link = self._link()
        local = (str(req["local"][0]), int(req["local"][1]))
        peer = req.get("peer")
        sid = link.new_stream_id()
        family = int(req["family"])
        relay = await open_udp_relay(link.mux, sid, local, (str(peer[0]), int(peer[1])) if peer else None, family)
        # Queries to this machine's name servers are answered by the target's resolver (the agent's dnsanswer.py).
        relay.answer = [[str(a[0]), int(a[1])] for a in req.get("answer") or ()]
        try:
            res = await link.request("udp_open", self._udp_open_args(sid, relay), opens_stream=sid)
        except RemoteError as exc:
            relay.close()
            raise RpcError(exc.name, exc.message) from None
        assert relay.transport is not None
        address = relay.transport.get_extra_info("sockname")[:2]
        self._forget_udp(self.udp_by_app.get(relay.app))  # a socket connected anew, its old relay not released
        self.udp_relays[_key(*address)] = relay
        self.udp_by_app[relay.app] = relay
        door = address
        if peer:  # a connected socket addresses other destinations through the door of its family
            door_transport = self.udp_doors.get(family_of(local[0]))
            if door_transport is not None:
                door = door_transport.get_extra_info("sockname")[:2]
        return {"relay": list(address), "door": list(door), "sock": res["sock"]}

    @staticmethod
    def _udp_open_args(sid: int, relay: UdpRelay) -> dict:
        args = {"sid": sid, "family": relay.family}
        if relay.answer:
            args["answer"] = relay.answer
        return args

    def _forget_udp(self, relay: UdpRelay | None) -> None:
        if relay is None:
            return
        relay.close()
        for table in (self.udp_relays, self.udp_by_app):
            for key in [k for k, v in table.items() if v is relay]:
                del table[key]

    async def _restore_udp(self, link: AgentLink) -> None:
        """The app's UDP sockets outlive a lost agent: each relay gets a socket in the new agent (a new source
        port on the far side, as after a NAT rebinding). One the new agent refuses is closed, which a connected
        app socket sees as ECONNREFUSED."""
        for relay in list(self.udp_relays.values()):
            if relay.transport is None or relay.transport.is_closing():
                self._forget_udp(relay)
                continue
            sid = link.new_stream_id()
            relay.attach(link.mux, sid)
            try:
                await link.request("udp_open", self._udp_open_args(sid, relay), opens_stream=sid)
            except RemoteError as exc:
                log.warning("could not reopen a UDP socket in the new agent: %s", exc.message)
                self._forget_udp(relay)

    async def _release(self, req: dict) -> dict:
        relay = self.udp_relays.get(_key(str(req["relay"][0]), int(req["relay"][1])))
        if relay is not None and not app_socket_open(relay.app):
            self._forget_udp(relay)
        return {}

    async def _dns(self, req: dict) -> Any:
        args = {k: v for k, v in req.items() if k != "op"}
        self.counters.dns_lookups += 1
        try:
            return await self.dns_cache.lookup(args, self._ask_agent_dns)
        except RemoteError as exc:
            raise RpcError(exc.name, exc.message) from None

    async def _ask_agent_dns(self, args: dict) -> Any:
        link = self._link()
        if self.dns_cache.enabled and link is not self._dns_watched:
            self._watch_resolver_files(link)
        return await link.request("dns", args)

    def _watch_resolver_files(self, link: AgentLink) -> None:
        """Keeps one ``dns_watch`` open on ``link`` while the cache is in use; its answer empties the cache.

        The first watch goes on the wire before the lookup that started it, so the agent's baseline is no
        newer than the files that lookup reads. An agent without the capability leaves the TTLs as the only
        bound."""
        self._dns_watched = link
        if link.hello is None or "dns_watch" not in link.hello.capabilities:
            return
        if self._dns_watch is not None:
            self._dns_watch.cancel()
        self._dns_watch = asyncio.ensure_future(self._keep_watching(link, link.send("dns_watch", {})))

    async def _keep_watching(self, link: AgentLink, answer: asyncio.Future) -> None:
        while True:
            try:
                res = await answer
            except RemoteError:
                return  # the link is gone; the next agent's first lookup watches again
            if res.get("changed"):
                self.dns_cache.flush()
            if link is not self.link or link.failure is not None or self._closing:
                return
            answer = link.send("dns_watch", {"since": res.get("stamp")})

    async def _listens(self, req: dict) -> Any:
        """Whether something in the target listens on a loopback port (mirror_py/shim/local_listeners.py)."""
        link = self._link()
        if link.hello is None or "listens" not in link.hello.capabilities:
            raise RpcError("ENOTSUP", "this agent cannot list the target's listeners")
        try:
            return await link.request("listens", {"proto": str(req["proto"]), "ip": str(req["ip"]),
                                                  "port": int(req["port"])})
        except RemoteError as exc:
            raise RpcError(exc.name, exc.message) from None

    async def _fs(self, req: dict) -> Any:
        """File operations of the app, done by the agent inside the target's root (see session/files.py)."""
        result = await session_files.handle(self._link(), req, self.fs_cache)
        self.counters.count_fs(req, result)
        return result

    async def _routes(self, req: dict) -> dict:
        """A shim's last routing decisions, sent at its exit (the batch itself is taken by the RPC server)."""
        return {}

    async def _info(self, req: dict) -> dict:
        """What the session is connected to, and what it costs: requests sent to the current agent by
        operation (each one a round trip) and the name cache's counters."""
        hello = self.link.hello if self.link else None
        t = self.cfg.target
        return {"target": self.target_description, "agent": hello.info if hello else None,
                "mode": self.mode, "pid": os.getpid(), "pod": self.pod,
                "agent_mode": getattr(self.placement, "mode", None) or "local",
                "key": target_key(t.path, t.namespace, t.context, t.kubeconfig),
                "counters": self.counters.snapshot(self.link, self.dns_cache.stats, self.fs_cache.stats),
                "requests": dict(self.link.requests) if self.link else {}, "dns_cache": dict(self.dns_cache.stats),
                "fs_cache": dict(self.fs_cache.stats)}


class StartInterrupted(Exception):
    """A signal arrived before the app started; what the start had placed was cleaned up."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name} before the app started")


#: A whole start (API lookups, agent pod, exec channel, hello, placement) may take this many times
#: agent.startup_timeout. Each step has its own bound; this one is what a caller waiting for the session can
#: count on whatever the steps do (see mirror_py/shim/ready_line.py).
START_BOUND_FACTOR = 3


def start_bound(cfg: config_mod.Config) -> float:
    """Seconds a session's start may take before it gives up and cleans up."""
    return START_BOUND_FACTOR * cfg.agent.startup_timeout


def _cancel_start_on_signals() -> list[int]:
    """Until the app runs, SIGINT, SIGTERM and SIGHUP cancel the current task instead of killing the process,
    so the usual cleanup runs: an agent job or pod placed half-way is deleted, and nothing (a kubeconfig's
    credentials included) is left behind. Returns the list the signal numbers land in."""
    import signal

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    got: list[int] = []

    def on_signal(sig: int) -> None:
        got.append(sig)
        if task is not None:
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal, sig)
    return got


async def _within(clock: start_clock.StartClock, coro: Any) -> None:
    """``coro`` until the clock's deadline, which may move while it runs; like ``asyncio.wait_for``, a timeout or
    a cancellation cancels it and waits for its cleanup."""
    task = asyncio.ensure_future(coro)  # copies this context: the placement finds the clock
    try:
        while not task.done():
            remaining = clock.remaining()
            if remaining <= 0:
                break
            await asyncio.wait({task}, timeout=remaining)
    except asyncio.CancelledError:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise asyncio.TimeoutError
    task.result()


async def start_interruptibly(session: Session, on_extend: Callable[[float], None] | None = None) -> None:
    """``session.start()`` with :func:`_cancel_start_on_signals`: a signal during it becomes StartInterrupted,
    raised after the start's own cleanup ran. ``on_extend`` hears the new remaining time when a slow image pull
    pushes the bound back (mirror_py/start_clock.py)."""
    interrupted = _cancel_start_on_signals()
    clock = start_clock.StartClock(start_bound(session.cfg), on_extend)
    token = start_clock.current.set(clock)
    try:
        await _within(clock, session.start())
    except asyncio.CancelledError:
        if interrupted:
            raise StartInterrupted(interrupted[0]) from None
        raise
    except asyncio.TimeoutError:
        pulled = clock.total - start_bound(session.cfg)
        extra = f", plus {pulled:g} s while the agent image was pulled" if pulled > 0 else ""
        raise MirrorError(f"the session did not start within {clock.total:g} s ({START_BOUND_FACTOR} x "
                          f"agent.startup_timeout{extra}); nothing was left behind. Run with -v to see the step it "
                          "was waiting on, and raise agent.startup_timeout if the cluster is just slow") from None
    finally:
        start_clock.current.reset(token)


async def run_command(cfg: config_mod.Config, command: list[str]) -> int:
    """Runs ``command`` interposed on ``cfg``'s target and returns its exit status.

    Ctrl-C in a terminal reaches the command directly (same process group); the session waits for it to end,
    then ends the agent. A SIGTERM sent to mirror-py itself is passed on to the command.
    """
    import signal

    session = Session(cfg)
    try:
        await start_interruptibly(session)
        env = session.app_environment(os.environ)
        try:
            proc = await asyncio.create_subprocess_exec(*command, env=env)
        except FileNotFoundError:
            raise MirrorError(f"command not found: {command[0]}") from None
        except PermissionError:
            raise MirrorError(f"command is not executable: {command[0]}") from None
        loop = asyncio.get_running_loop()
        interactive = sys.stdin.isatty() if sys.stdin else False

        def forward(sig: int) -> None:
            if sig == signal.SIGINT and interactive:
                return  # the terminal already delivered it to the whole foreground group
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, forward, sig)
        try:
            code = await proc.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return code if code >= 0 else 128 - code
    finally:
        await session.close()

