""""Local for this block": a routing decision scoped to the calling thread or task, never an uninstall.

Switching the shim off and on again would throw state away: the registries that let an open remote file write
back, a relayed socket report its pod-side peer and an inherited listener find its subscription would be
cleared, and every other thread of the process would go local too. Instead, :func:`local` sets a
:class:`contextvars.ContextVar`, and every routing decision (outgoing connect/sendto, name lookups, paths,
bind/listen) asks :func:`is_local` first. What already exists keeps working as before, inside the block and
after it, because nothing is forgotten.

A context variable is per thread and per asyncio task: a task created inside the block copies the context
and is local too; other threads and tasks are not. A thread started inside the block starts with an empty
context (``threading.Thread`` does not copy it) and so is not local; ``contextvars.copy_context().run`` or
``asyncio.to_thread`` carries the block into it. asyncio's own name lookups (``loop.getaddrinfo``, which every
``open_connection`` by name uses) run in a thread pool: the shim carries the block there; other work handed to
a pool (``loop.run_in_executor``, ``concurrent.futures``) runs without it.

The environment is not scoped: ``os.environ`` is one per process, so it stays the session's inside the block.
"""

from __future__ import annotations

import _thread
import functools
import sys
from _contextvars import ContextVar  # the contextvars module re-exports it; not imported at start-up
from typing import Any, Callable, TypeVar

# How many local blocks the current context is in: a count kept in the context itself rather than tokens kept
# in the ``local`` object, so that one object may be entered by several threads or tasks at once.
_DEPTH: ContextVar[int] = ContextVar("mirror_py_local", default=0)

#: The check every routing decision makes first (truthy inside a block): one C call, no allocation.
is_local: Callable[[], int] = _DEPTH.get

F = TypeVar("F", bound=Callable[..., Any])
_install_lock = _thread.allocate_lock()


def _carry_into_asyncio() -> None:
    """asyncio resolves names in a thread pool that does not see the task's context: while the shim interposes
    and asyncio is in use, its two lookups carry the block there (patches.ASYNCIO_SURFACE, installed once)."""
    patches = sys.modules.get(__package__ + ".patches")
    if patches is None or patches.is_installed(patches.ASYNCIO_SURFACE):
        return
    with _install_lock:  # two threads entering their first blocks at once must not patch twice
        if patches.is_installed(patches.SOCKET_SURFACE) and not patches.is_installed(patches.ASYNCIO_SURFACE):
            patches.install(patches.ASYNCIO_SURFACE)


class local:  # used like a function: ``with local():``, ``@local()``
    """Runs a block (or every call of a decorated function) with this machine's network, DNS, files and
    listeners, without touching the session: remote files, relayed sockets and listeners opened before keep
    the target's view. Blocks nest; leaving one restores what was in force before it."""

    __slots__ = ()

    def __enter__(self) -> local:
        if "asyncio.base_events" in sys.modules:
            _carry_into_asyncio()
        _DEPTH.set(_DEPTH.get() + 1)
        return self

    def __exit__(self, *exc: object) -> None:
        depth = _DEPTH.get()
        if depth > 0:
            _DEPTH.set(depth - 1)

    async def __aenter__(self) -> local:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)

    def __call__(self, fn: F) -> F:
        """As a decorator: each call runs in a block of its own (coroutine functions for their whole run)."""
        import inspect  # only for the decorator: the shim's modules import this one at start-up

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with local():
                    return await fn(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with local():
                return fn(*args, **kwargs)

        return run  # type: ignore[return-value]
