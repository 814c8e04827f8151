"""Server-side printing: ``meta.k8s.io`` Tables, the way ``kubectl get`` asks for objects.

kubectl does not know how to print a Pod: it sends ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io``
and prints the columns the API server chose. A server that answers with the plain object gets the fallback
NAME and AGE columns, so the sandbox renders the same columns, with the same cell rules (READY counts only
running and ready containers, STATUS is the first waiting or terminated reason, AGE is a human duration), as
the real server's printers. ``includeObject`` decides what each row carries: ``Metadata`` (the default, what
kubectl needs for ``-A``'s NAMESPACE column), ``Object`` or ``None``.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tests.sandbox.manifest import RESOURCES, ApiError

JSON_TYPES = ("application/json", "application/*", "*/*")
SERVED_TYPES = "application/json, application/yaml, application/vnd.kubernetes.protobuf"


@dataclass
class View:
    """What a GET should answer: the object(s) themselves, or a Table of a ``meta.k8s.io`` version."""

    table: bool = False
    version: str = "v1"
    include_object: str = "Metadata"


def requested_view(accept: str | None, query: dict[str, list[str]]) -> View:
    """The first media type of the Accept header the server can produce, as the API server negotiates it:
    a Table of v1 or v1beta1, or JSON. Protobuf is not produced here (JSON is always a client's fallback);
    a header that leaves nothing to answer with is a 406."""
    include = query.get("includeObject", ["Metadata"])[0] or "Metadata"
    if include not in ("None", "Metadata", "Object"):
        raise ApiError.bad_request(f'includeObject: Unsupported value: "{include}": supported values: '
                                   '"None", "Metadata", "Object"')
    if not accept:
        return View()
    for clause in accept.split(","):
        media, *params = [part.strip() for part in clause.split(";")]
        options = dict(p.split("=", 1) for p in params if "=" in p)
        media = media.lower()
        if media not in JSON_TYPES:
            continue
        if options.get("as") == "Table":
            if options.get("g") == "meta.k8s.io" and options.get("v") in ("v1", "v1beta1"):
                return View(True, options["v"], include)
            continue
        if "as" in options:
            continue  # PartialObjectMetadata and other conversions are not served
        return View()
    raise ApiError(
        406, "NotAcceptable", f"only the following media types are accepted: {SERVED_TYPES}", {}
    )


def human_duration(seconds: float) -> str:
    """Kubernetes' short human durations (``45s``, ``5m2s``, ``3h``, ``2d4h``): the AGE column."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        rest = hours % 24
        return f"{days}d{rest}h" if rest else f"{days}d"
    if hours < 24 * 365 * 2:
        return f"{days}d"
    years = days // 365
    if hours < 24 * 365 * 8:
        rest = days % 365
        return f"{years}y{rest}d" if rest else f"{years}y"
    return f"{years}y"


def _parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return None


def _since(text: str | None) -> str:
    when = _parse_time(text)
    if when is None:
        return "<unknown>"
    return human_duration((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds())


def _selector(selector: dict[str, Any] | None) -> str:
    """``metav1.FormatLabelSelector``: ``app=api,tier in (a,b)``, ``<none>`` when empty."""
    if not selector:
        return "<none>"
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        op, key, values = expr.get("operator", ""), expr.get("key", ""), expr.get("values") or []
        if op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            parts.append(f"{key} {op.lower()} ({','.join(values)})")
    return ",".join(parts) or "<none>"


def _map_selector(labels: dict[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or "<none>"


def _containers(template_spec: dict[str, Any]) -> list[str]:
    containers = template_spec.get("containers") or []
    return [",".join(c.get("name", "") for c in containers), ",".join(c.get("image", "") for c in containers)]


def _pod_row(pod: dict[str, Any]) -> list[Any]:
    spec, status, meta = pod.get("spec") or {}, pod.get("status") or {}, pod["metadata"]
    reason = status.get("reason") or status.get("phase") or ""
    total = len(spec.get("containers") or [])
    ready = restarts = 0
    last_restart: datetime.datetime | None = None
    running = False
    for cs in reversed(status.get("containerStatuses") or []):
        restarts += int(cs.get("restartCount") or 0)
        ended = _parse_time(((cs.get("lastState") or {}).get("terminated") or {}).get("finishedAt"))
        if ended and (last_restart is None or ended > last_restart):
            last_restart = ended
        state = cs.get("state") or {}
        waiting, terminated = state.get("waiting"), state.get("terminated")
        if waiting and waiting.get("reason"):
            reason = waiting["reason"]
        elif terminated and terminated.get("reason"):
            reason = terminated["reason"]
        elif terminated:
            signal = terminated.get("signal")
            reason = f"Signal:{signal}" if signal else f"ExitCode:{terminated.get('exitCode', 0)}"
        elif cs.get("ready") and "running" in state:
            running = True
            ready += 1
    if reason == "Completed" and running:
        pod_ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        reason = "Running" if pod_ready else "NotReady"
    if meta.get("deletionTimestamp") and status.get("phase") not in ("Succeeded", "Failed"):
        reason = "Terminating"
    restarts_text = str(restarts)
    if restarts and last_restart is not None:
        ago = (datetime.datetime.now(datetime.timezone.utc) - last_restart).total_seconds()
        restarts_text = f"{restarts} ({human_duration(ago)} ago)"
    gates = spec.get("readinessGates") or []
    if gates:
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        gates_text = f"{sum(1 for g in gates if conditions.get(g.get('conditionType')) == 'True')}/{len(gates)}"
    else:
        gates_text = "<none>"
    return [
        meta["name"],
        f"{ready}/{total}",
        reason,
        restarts_text,
        _since(meta.get("creationTimestamp")),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        gates_text,
    ]


def _deployment_row(obj: dict[str, Any]) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return [
        obj["metadata"]["name"],
        f"{int(status.get('readyReplicas') or 0)}/{int(spec.get('replicas', 1))}",
        int(status.get("updatedReplicas") or 0),
        int(status.get("availableReplicas") or 0),
        _since(obj["metadata"].get("creationTimestamp")),
        *_containers(((spec.get("template") or {}).get("spec")) or {}),
        _selector(spec.get("selector")),
    ]


def _replicaset_row(obj: dict[str, Any]) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return [
        obj["metadata"]["name"],
        int(spec.get("replicas", 1)),
        int(status.get("replicas") or 0),
        int(status.get("readyReplicas") or 0),
        _since(obj["metadata"].get("creationTimestamp")),
        *_containers(((spec.get("template") or {}).get("spec")) or {}),
        _selector(spec.get("selector")),
    ]


def _statefulset_row(obj: dict[str, Any]) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return [
        obj["metadata"]["name"],
        f"{int(status.get('readyReplicas') or 0)}/{int(spec.get('replicas', 1))}",
        _since(obj["metadata"].get("creationTimestamp")),
        *_containers(((spec.get("template") or {}).get("spec")) or {}),
    ]


def _daemonset_row(obj: dict[str, Any]) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    template_spec = ((spec.get("template") or {}).get("spec")) or {}
    return [
        obj["metadata"]["name"],
        int(status.get("desiredNumberScheduled") or 0),
        int(status.get("currentNumberScheduled") or 0),
        int(status.get("numberReady") or 0),
        int(status.get("updatedNumberScheduled") or 0),
        int(status.get("numberAvailable") or 0),
        _map_selector(template_spec.get("nodeSelector")),
        _since(obj["metadata"].get("creationTimestamp")),
        *_containers(template_spec),
        _selector(spec.get("selector")),
    ]


def _job_status(obj: dict[str, Any]) -> str:
    status = obj.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    for kind in ("Complete", "Failed", "FailureTarget", "SuccessCriteriaMet", "Suspended"):
        if conditions.get(kind) == "True":
            return kind
    if obj["metadata"].get("deletionTimestamp"):
        return "Terminating"
    return "Running"


def _job_row(obj: dict[str, Any]) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    succeeded = int(status.get("succeeded") or 0)
    completions = spec.get("completions", 1)
    parallelism = int(spec.get("parallelism", 1))
    if completions is not None:
        done = f"{succeeded}/{int(completions)}"
    else:
        done = f"{succeeded}/1 of {parallelism}" if parallelism > 1 else f"{succeeded}/1"
    started, finished = _parse_time(status.get("startTime")), _parse_time(status.get("completionTime"))
    duration = ""
    if started is not None:
        end = finished or datetime.datetime.now(datetime.timezone.utc)
        duration = human_duration((end - started).total_seconds())
    return [
        obj["metadata"]["name"],
        _job_status(obj),
        done,
        duration,
        _since(obj["metadata"].get("creationTimestamp")),
        *_containers(((spec.get("template") or {}).get("spec")) or {}),
        _selector(spec.get("selector")),
    ]


def _service_row(obj: dict[str, Any]) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    kind = spec.get("type", "ClusterIP")
    external = spec.get("externalIPs") or []
    ingress = [i.get("ip") or i.get("hostname") for i in (status.get("loadBalancer") or {}).get("ingress") or []]
    if kind == "ExternalName":
        external_text = spec.get("externalName") or "<none>"
    elif kind == "LoadBalancer":
        external_text = ",".join([*ingress, *external]) or "<pending>"
    else:
        external_text = ",".join(external) or "<none>"
    ports = []
    for port in spec.get("ports") or []:
        node_port = f":{port['nodePort']}" if port.get("nodePort") else ""
        ports.append(f"{port.get('port')}{node_port}/{port.get('protocol', 'TCP')}")
    return [
        obj["metadata"]["name"],
        kind,
        spec.get("clusterIP") or "<none>",
        external_text,
        ",".join(ports) or "<none>",
        _since(obj["metadata"].get("creationTimestamp")),
        _map_selector(spec.get("selector")),
    ]


def _endpoints_row(obj: dict[str, Any]) -> list[Any]:
    addresses = []
    for subset in obj.get("subsets") or []:
        ports = subset.get("ports") or [{}]
        for address in subset.get("addresses") or []:
            for port in ports:
                addresses.append(f"{address.get('ip')}:{port['port']}" if "port" in port else address.get("ip"))
    text = ",".join(addresses[:3]) + (f" + {len(addresses) - 3} more..." if len(addresses) > 3 else "")
    return [obj["metadata"]["name"], text or "<none>", _since(obj["metadata"].get("creationTimestamp"))]


def _namespace_row(obj: dict[str, Any]) -> list[Any]:
    return [
        obj["metadata"]["name"],
        (obj.get("status") or {}).get("phase", "Active"),
        _since(obj["metadata"].get("creationTimestamp")),
    ]


def _configmap_row(obj: dict[str, Any]) -> list[Any]:
    count = len(obj.get("data") or {}) + len(obj.get("binaryData") or {})
    return [obj["metadata"]["name"], count, _since(obj["metadata"].get("creationTimestamp"))]


def _secret_row(obj: dict[str, Any]) -> list[Any]:
    count = len(obj.get("data") or {}) + len(obj.get("stringData") or {})
    return [obj["metadata"]["name"], obj.get("type", "Opaque"), count, _since(obj["metadata"].get("creationTimestamp"))]


def _serviceaccount_row(obj: dict[str, Any]) -> list[Any]:
    return [obj["metadata"]["name"], len(obj.get("secrets") or []), _since(obj["metadata"].get("creationTimestamp"))]


def _default_row(obj: dict[str, Any]) -> list[Any]:
    return [obj["metadata"].get("name", ""), obj["metadata"].get("creationTimestamp")]


# (name, type, priority, description); priority 1 columns are shown by ``-o wide`` only.
Column = tuple[str, str, int, str]
NAME: Column = ("Name", "string", 0, "Name must be unique within a namespace.")
AGE: Column = ("Age", "string", 0, "The time since the object was created.")
CONTAINERS: Column = ("Containers", "string", 1, "Names of each container in the template.")
IMAGES: Column = ("Images", "string", 1, "Images referenced by each container in the template.")
SELECTOR: Column = ("Selector", "string", 1, "The label query over the objects it manages.")

PRINTERS: dict[str, tuple[Sequence[Column], Callable[[dict[str, Any]], list[Any]]]] = {
    "pods": (
        [
            NAME,
            ("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
            ("Status", "string", 0, "The aggregate status of the containers in this pod."),
            ("Restarts", "string", 0, "The number of times the containers in this pod have been restarted."),
            AGE,
            ("IP", "string", 1, "IP address allocated to the pod."),
            ("Node", "string", 1, "Name of the Node this pod runs on."),
            ("Nominated Node", "string", 1, "Name of the node nominated by the scheduler."),
            ("Readiness Gates", "string", 1, "Pod readiness gates."),
        ],
        _pod_row,
    ),
    "deployments": (
        [
            NAME,
            ("Ready", "string", 0, "Number of the pods ready out of the desired ones."),
            ("Up-to-date", "integer", 0, "Total number of pods with the desired template."),
            ("Available", "integer", 0, "Total number of available pods."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        _deployment_row,
    ),
    "replicasets": (
        [
            NAME,
            ("Desired", "integer", 0, "Number of desired pods."),
            ("Current", "integer", 0, "Number of actual pods."),
            ("Ready", "integer", 0, "Number of ready pods."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        _replicaset_row,
    ),
    "statefulsets": (
        [NAME, ("Ready", "string", 0, "Number of the pods ready out of the desired ones."), AGE, CONTAINERS, IMAGES],
        _statefulset_row,
    ),
    "daemonsets": (
        [
            NAME,
            ("Desired", "integer", 0, "Number of nodes that should run the daemon pod."),
            ("Current", "integer", 0, "Number of nodes running at least one daemon pod."),
            ("Ready", "integer", 0, "Number of nodes whose daemon pod is ready."),
            ("Up-to-date", "integer", 0, "Number of nodes running the updated daemon pod."),
            ("Available", "integer", 0, "Number of nodes whose daemon pod is available."),
            ("Node Selector", "string", 0, "The node selector of the pod template."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        _daemonset_row,
    ),
    "jobs": (
        [
            NAME,
            ("Status", "string", 0, "Status of the job."),
            ("Completions", "string", 0, "The desired number of successfully finished pods."),
            ("Duration", "string", 0, "Time required to complete the job."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        _job_row,
    ),
    "services": (
        [
            NAME,
            ("Type", "string", 0, "How the service is exposed."),
            ("Cluster-IP", "string", 0, "The IP address of the service."),
            ("External-IP", "string", 0, "External IP addresses of the service."),
            ("Port(s)", "string", 0, "The ports exposed by the service."),
            AGE,
            ("Selector", "string", 1, "Route service traffic to pods with these labels."),
        ],
        _service_row,
    ),
    "endpoints": ([NAME, ("Endpoints", "string", 0, "Endpoints of the service."), AGE], _endpoints_row),
    "namespaces": ([NAME, ("Status", "string", 0, "The phase of the namespace."), AGE], _namespace_row),
    "configmaps": ([NAME, ("Data", "string", 0, "Number of keys."), AGE], _configmap_row),
    "secrets": (
        [NAME, ("Type", "string", 0, "The type of the secret."), ("Data", "string", 0, "Number of keys."), AGE],
        _secret_row,
    ),
    "serviceaccounts": ([NAME, ("Secrets", "string", 0, "Number of secrets."), AGE], _serviceaccount_row),
}
DEFAULT_PRINTER: tuple[Sequence[Column], Callable[[dict[str, Any]], list[Any]]] = (
    [NAME, ("Created At", "date", 0, "The time the object was created.")],
    _default_row,
)


def _row_object(resource: str, obj: dict[str, Any], include: str) -> dict[str, Any] | None:
    if include == "None":
        return None
    info = RESOURCES[resource]
    if include == "Object":
        return {"kind": info.kind, "apiVersion": info.api_version, **obj}
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}


def table(resource: str, objects: Sequence[dict[str, Any]], view: View, rv: int | str,
          columns: bool = True, continue_token: str = "") -> dict[str, Any]:
    """A ``meta.k8s.io`` Table of ``objects``. ``columns=False`` leaves the column definitions out, as in every
    watch event after the first."""
    definitions, row_of = PRINTERS.get(resource, DEFAULT_PRINTER)
    meta: dict[str, Any] = {"resourceVersion": str(rv)}
    if continue_token:
        meta["continue"] = continue_token
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": row_of(obj)}
        embedded = _row_object(resource, obj, view.include_object)
        if embedded is not None:
            row["object"] = embedded
        rows.append(row)
    out: dict[str, Any] = {"kind": "Table", "apiVersion": f"meta.k8s.io/{view.version}", "metadata": meta}
    out["columnDefinitions"] = [
        {
            "name": name,
            "type": kind,
            "format": "name" if name == "Name" else "",
            "description": description,
            "priority": priority,
        }
        for name, kind, priority, description in definitions
    ] if columns else None
    out["rows"] = rows
    return out
