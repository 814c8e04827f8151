"""Small faults of real clusters, each with the answer the user should read."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from kubernetes.client.exceptions import ApiException

from mirror_py.errors import MirrorError
from mirror_py.kube import placement
from mirror_py.kube.targets import ResolvedTarget
from mirror_py.transport.k8s_exec import ExecChannel


def test_a_token_refresh_runs_off_the_event_loop():
    """An exec credential plugin may take seconds (a cloud CLI): the session's loop must keep serving its other
    streams meanwhile. The plugin here waits for the loop to run a task; run on the loop it would wait in vain."""
    loop_ran = threading.Event()
    seen: dict = {}

    class Cfg:
        host = "http://127.0.0.1:1"
        verify_ssl = True

        def auth_settings(self):
            seen["loop alive during refresh"] = loop_ran.wait(10)
            return {"BearerToken": {"value": "Bearer fresh"}}

    async def main() -> None:
        async def tick() -> None:
            await asyncio.sleep(0)
            loop_ran.set()

        channel = ExecChannel(Cfg(), "ns", "pod", None, ["true"], "test", open_timeout=5)
        ticker = asyncio.ensure_future(tick())
        with pytest.raises(MirrorError):  # nothing listens on port 1
            await channel.open(None)
        await ticker

    asyncio.run(main())
    assert seen == {"loop alive during refresh": True}


class _Kube:
    """The two answers of an API server whose pod was deleted: 404 on the patch, 404 on the pod."""

    def __init__(self, pod_exists: bool) -> None:
        self.pod_exists = pod_exists

    @staticmethod
    def _not_found(what: str) -> ApiException:
        exc = ApiException(status=404, reason="Not Found")
        exc.body = json.dumps({"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404,
                               "message": what})
        return exc

    def request_json(self, method, path, body=None, content_type=None, **query):
        raise self._not_found('pods "api-1" not found' if not self.pod_exists else
                              "the server could not find the requested resource")

    def get_json(self, path, **query):
        if not self.pod_exists:
            raise self._not_found('pods "api-1" not found')
        return {"metadata": {"name": "api-1"}, "spec": {}}


@pytest.mark.parametrize("pod_exists", [False, True])
def test_a_404_on_the_ephemeral_patch_tells_a_gone_pod_from_disabled_ephemeral_containers(pod_exists):
    target = ResolvedTarget("staging", "api-1", "app", "10.244.0.5", "node", "named",
                            pod_object={"spec": {"containers": [{"name": "app"}]}})
    with pytest.raises(MirrorError) as err:
        asyncio.run(placement.ephemeral_mode(_Kube(pod_exists), target, "python3", "python:3.12-slim", 5))
    if pod_exists:
        assert "ephemeral containers are disabled here" in str(err.value)
    else:
        assert str(err.value) == ("pod staging/api-1 no longer exists (deleted or replaced while the ephemeral "
                                  "agent was being added); run again to target its replacement")
