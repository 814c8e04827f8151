"""pytest plugin: ``pytest --mirror-target deploy/api`` runs the whole test session in the target's context.

The session starts in ``pytest_configure``, before collection, so module-level ``os.environ`` reads already see
the target's values. pytest-xdist workers are started later by the controller and inherit its environment, so
their interpreters install the shim from sitecustomize and share the controller's one session.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from mirror_py.shim.scope import local as LocalBlock


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("mirror-py", "run the tests in the context of a pod")
    group.addoption("--mirror-target", default=os.environ.get("MIRROR_PY_TARGET"),
                    help="target to mirror, e.g. deploy/api or pid/4242 (default: MIRROR_PY_TARGET)")
    group.addoption("--mirror-namespace", default=None, help="Kubernetes namespace of the target")
    group.addoption("--mirror-config", default=None, help="mirror-py configuration file")


class MirrorFixture:
    """What the ``mirror`` fixture gives a test: the session, and a way to run a block locally."""

    def __init__(self, session: Any) -> None:
        self.session = session

    @property
    def target(self) -> str | None:
        return self.session.target if self.session is not None else os.environ.get("MIRROR_PY_TARGET")

    def local(self) -> LocalBlock:
        """A block (``with mirror.local():``) whose new connections, name lookups, file opens and listeners are
        this machine's, for the calling thread or task only; what was opened before keeps the target's view."""
        from mirror_py.shim.scope import local

        return local()


def pytest_configure(config: Any) -> None:
    target = config.getoption("mirror_target", None)
    config._mirror_py_session = None
    if not target or hasattr(config, "workerinput"):
        return  # no target, or an xdist worker: the controller's session already reaches us via sitecustomize
    if os.environ.get("MIRROR_PY_SESSION"):
        return  # already interposed (e.g. under `mirror-py exec`)
    from mirror_py.api import connect
    from mirror_py.errors import MirrorError

    if config.getoption("mirror_namespace"):
        os.environ["MIRROR_PY_NAMESPACE"] = config.getoption("mirror_namespace")
    try:
        session = connect(target, config=config.getoption("mirror_config"))
    except MirrorError as exc:
        raise pytest.UsageError(f"mirror-py: {exc}") from None
    config._mirror_py_session = session
    config.add_cleanup(lambda: _close(session))


def _close(session: Any) -> None:
    """Ends the run's session; what it could not do (a remote write that never arrived) is one line."""
    try:
        session.close()
    except Exception as exc:
        sys.stderr.write(f"mirror-py: error: {str(exc).removeprefix('mirror-py: ')}\n")


@pytest.fixture
def mirror(request: Any) -> MirrorFixture:
    return MirrorFixture(request.config._mirror_py_session)
