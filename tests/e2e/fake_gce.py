"""A fake Google Cloud project: Compute Engine v1 instances and zone operations,
plus the reads our read-only bootstrap makes (Resource Manager, IAM, subnets).

``FakeCloud`` is the state and the behaviour; ``tests.e2e.fake_gce_http``
serves it over HTTP at the URLs ``provider.api_endpoints`` names. What it is
faithful to, because Ray's ``GCPCompute`` and our ``ZonalGCPCompute`` depend
on it:

- ``instances.insert``: the body is checked against the ``Instance`` schema of
  the compute v1 discovery document shipped in google-api-python-client, then
  the way GCE refuses bodies (name pattern, label syntax, a machine or disk
  type of another zone, an unknown subnet or service account, Spot without
  TERMINATE / no automatic restart, a duplicate name); the instance exists at
  once as PROVISIONING, goes STAGING and RUNNING with its operation;
- zone operations go PENDING, RUNNING, DONE: one step per
  ``zoneOperations.get`` and, when ``op_step_s`` is set, one step per that many
  seconds without polls (GCE does not wait to be asked). A failed insert ends
  DONE with ``error`` and leaves no instance;
- ``setLabels`` needs the current ``labelFingerprint`` (412 otherwise) and
  changes it; ``list`` evaluates the ``filter`` (``tests.e2e.gce_filter``) and
  omits ``items`` when nothing matches; ``get``; ``delete`` (STOPPING, then gone);
  an unknown or deleted instance is a 404 in Google's error shape;
- a zone can be made exhausted (``ZONE_RESOURCE_POOL_EXHAUSTED``, in the insert's
  operation or as the insert's own 503), and a Spot instance can be preempted:
  with ``instanceTerminationAction: DELETE`` the fake deletes it on its own;
- every call is recorded (``calls``), including calls to methods the fake
  does not serve (answered 403, as for an account without the permission).

``intercept``/``preempt_on_call`` run something once just before the first
call that matches (a preemption racing the autoscaler's next call about an
instance, or an error answer).

Hooks ``on_running(instance)`` and ``on_gone(instance)`` (run on a thread of
their own) let the harness boot and kill a machine for each instance.
"""

from __future__ import annotations

import base64
import ipaddress
import itertools
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.e2e.gce_filter import FilterError, compile_filter
from tests.infra.iam.discovery import validate

COMPUTE = "compute.v1"
CRM = "cloudresourcemanager.v1"
IAM = "iam.v1"
GCE = "https://www.googleapis.com/compute/v1"

_STATUS_TEXT = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
    404: "NOT_FOUND", 409: "ALREADY_EXISTS", 412: "FAILED_PRECONDITION", 503: "UNAVAILABLE",
}
_REASON = {
    400: "invalid", 401: "required", 403: "forbidden", 404: "notFound",
    409: "alreadyExists", 412: "conditionNotMet", 503: "backendError",
}
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")


class ApiError(Exception):
    """An HTTP error answer in Google's JSON error shape."""

    def __init__(self, code: int, message: str, reason: str | None = None):
        super().__init__(message)
        self.code, self.message = code, message
        self.reason = reason or _REASON.get(code, "error")

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "errors": [{"message": self.message, "domain": "global", "reason": self.reason}],
                "status": _STATUS_TEXT.get(self.code, "UNKNOWN"),
            }
        }


@dataclass
class Call:
    api: str  # "compute.v1", "iam.v1", "cloudresourcemanager.v1"
    method: str  # discovery method id, e.g. "compute.instances.insert" ("?" if no route)
    params: dict[str, str]
    body: Any
    status: int = 0
    at: float = field(default_factory=time.monotonic)


@dataclass
class Operation:
    name: str
    zone: str
    kind: str  # insert | delete | setLabels | compute.instances.preempted
    target: str  # instance name
    status: str = "PENDING"
    error: dict | None = None
    polls: int = 0
    changed_at: float = field(default_factory=time.monotonic)


def _fingerprint() -> str:
    return base64.b64encode(os.urandom(8)).decode()


def _last(link: str) -> str:
    return str(link).rstrip("/").rsplit("/", 1)[-1]


def _zone_of_link(link: str) -> str | None:
    m = re.search(r"zones/([a-z0-9-]+)/", str(link))
    return m.group(1) if m else None


class FakeCloud:
    """One project, one region, its zones, one subnet: what `pulumi up` created."""

    def __init__(
        self,
        *,
        project: str,
        region: str,
        zones: list[str],
        subnetwork: str,  # self-link of the cluster subnet
        cidr: str,
        service_accounts: set[str],
        token: str | None = None,
        op_step_s: float | None = None,
    ):
        self.project, self.region, self.zones = project, region, list(zones)
        self.subnet_link, self.cidr = subnetwork, ipaddress.ip_network(cidr)
        self.service_accounts = set(service_accounts)
        self.token, self.op_step_s = token, op_step_s
        self.project_number = "123456789012"
        self.calls: list[Call] = []
        self.instances: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, Operation] = {}
        self.exhausted: dict[str, str] = {}  # zone -> "operation" | "insert"
        self.on_running: Callable[[dict], None] = lambda instance: None
        self.on_gone: Callable[[dict], None] = lambda instance: None
        self.lock = threading.RLock()
        self._ids = itertools.count(1000)
        hosts = list(self.cidr.hosts())
        self._free_ips = hosts[1:-1]  # .1 is the gateway; GCE reserves the last two
        self._hook_threads: list[threading.Thread] = []
        # One-shot interceptions: (matches(method, params, body), action(params)).
        self._interceptions: list[tuple[Callable[[str, dict, Any], bool], Callable[[dict], None]]] = []

    # ---- the harness's side --------------------------------------------------------

    def zone_url(self, zone: str) -> str:
        return f"{GCE}/projects/{self.project}/zones/{zone}"

    def allocate_ip(self, wanted: str | None = None) -> str:
        with self.lock:
            if wanted is None:
                return str(self._free_ips.pop(0))
            ip = ipaddress.ip_address(wanted)
            if ip not in self._free_ips:
                raise ApiError(400, f"IP address '{wanted}' is not available in the subnetwork")
            self._free_ips.remove(ip)
            return wanted

    def release_ip(self, ip: str) -> None:
        # To the back of the line: a deleted VM's address is not the next one handed out.
        with self.lock:
            self._free_ips.append(ipaddress.ip_address(ip))

    def add_running_instance(self, name: str, zone: str, labels: dict[str, str]) -> dict:
        """An instance that exists outside Ray (the provider VM): RUNNING, no hooks."""
        with self.lock:
            inst = self._new_instance(name, zone, {"name": name, "labels": labels}, None)
            inst["status"] = "RUNNING"
            self.instances[name] = inst
            return inst

    def preempt(self, name: str) -> None:
        """GCE reclaims a Spot VM: STOPPING, the VM goes away, then (action DELETE) the
        instance is deleted, or (STOP) it stays TERMINATED."""
        with self.lock:
            inst = self.instances.get(name)
            if inst is None:
                raise KeyError(name)
            sched = inst.get("scheduling", {})
            if sched.get("provisioningModel") != "SPOT" and not sched.get("preemptible"):
                raise ValueError(f"{name} is not a Spot VM; GCE preempts only Spot VMs")
            inst["status"] = "STOPPING"
            zone = _last(inst["zone"])
            op = self._operation(zone, "compute.instances.preempted", name)
            op.status = "DONE"
        self._hook(self.on_gone, inst)
        with self.lock:
            if sched.get("instanceTerminationAction", "STOP") == "DELETE":
                self._remove(name)
            else:
                inst["status"] = "TERMINATED"

    def intercept(self, matches: Callable[[str, dict, Any], bool],
                  action: Callable[[dict], None]) -> None:
        """Once: the first call for which ``matches(method, params, body)`` is true runs
        ``action(params)`` just before it is served (an ``ApiError`` it raises is the answer)."""
        with self.lock:
            self._interceptions.append((matches, action))

    def preempt_on_call(self, matches: Callable[[str, dict, Any], bool]) -> None:
        """Once: GCE preempts the Spot instance that the first matching call addresses just
        before that call arrives, as between the autoscaler's list and its next call; the
        call then meets what is left (with action DELETE: Google's 404)."""
        self.intercept(matches, lambda params: self.preempt(params["instance"]))

    def wait_hooks(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        for t in list(self._hook_threads):
            t.join(max(0.0, deadline - time.monotonic()))

    def methods(self) -> list[str]:
        return [c.method for c in self.calls]

    # ---- time ------------------------------------------------------------------

    def tick(self) -> None:
        """Advance operations that nobody polled (called periodically by the server)."""
        if self.op_step_s is None:
            return
        now = time.monotonic()
        with self.lock:
            for op in list(self.operations.values()):
                if op.status != "DONE" and now - op.changed_at >= self.op_step_s:
                    self._step(op)

    def _step(self, op: Operation) -> None:
        op.status = {"PENDING": "RUNNING", "RUNNING": "DONE"}.get(op.status, "DONE")
        op.changed_at = time.monotonic()
        inst = self.instances.get(op.target)
        if op.kind == "insert" and inst is not None:
            if op.status == "RUNNING":
                inst["status"] = "STAGING"
            elif op.error is not None:
                self._remove(op.target)
            else:
                inst["status"] = "RUNNING"
                self._hook(self.on_running, inst)
        elif op.kind == "delete" and op.status == "DONE" and inst is not None:
            self._remove(op.target)
            self._hook(self.on_gone, inst)

    def _remove(self, name: str) -> None:
        inst = self.instances.pop(name, None)
        if inst is not None:
            for nic in inst.get("networkInterfaces", []):
                if nic.get("networkIP"):
                    self.release_ip(nic["networkIP"])

    def _hook(self, hook: Callable[[dict], None], inst: dict) -> None:
        t = threading.Thread(target=hook, args=(inst,), daemon=True, name=f"hook-{inst['name']}")
        self._hook_threads.append(t)
        t.start()

    # ---- the API ---------------------------------------------------------------

    def handle(self, api: str, method: str, params: dict[str, str], body: Any) -> Any:
        handler = _HANDLERS.get(method)
        if handler is None:
            permission = method.replace(".projects.", ".", 1) if api == IAM else method
            raise ApiError(403, f"Required '{permission}' permission for 'projects/{self.project}'")
        project = params.get("project") or params.get("projectId")
        if project is not None and project != self.project:
            raise ApiError(403, f"The caller does not have permission on project {project}")
        zone = params.get("zone")
        if zone is not None and zone not in self.zones:
            raise ApiError(400, f"Invalid value for field 'zone': '{zone}'. Unknown zone.")
        with self.lock:
            for i, (matches, action) in enumerate(self._interceptions):
                if matches(method, params, body):
                    del self._interceptions[i]
                    action(params)
                    break
            return handler(self, params, body)

    def _operation(self, zone: str, kind: str, target: str, error: dict | None = None) -> Operation:
        name = f"operation-{int(time.time() * 1000)}-{next(self._ids):x}"
        op = Operation(name=name, zone=zone, kind=kind, target=target, error=error)
        self.operations[name] = op
        return op

    def _op_json(self, op: Operation) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(abs(hash(op.name)) % 10**18),
            "name": op.name,
            "zone": self.zone_url(op.zone),
            "operationType": op.kind,
            "targetLink": f"{self.zone_url(op.zone)}/instances/{op.target}",
            "status": op.status,
            "progress": 100 if op.status == "DONE" else 0,
            "selfLink": f"{self.zone_url(op.zone)}/operations/{op.name}",
        }
        if op.status == "DONE" and op.error is not None:
            out["error"] = op.error
            out["httpErrorStatusCode"] = 503
            out["httpErrorMessage"] = "SERVICE UNAVAILABLE"
        return out

    def _not_found(self, zone: str, name: str, what: str = "instances") -> ApiError:
        return ApiError(
            404, f"The resource 'projects/{self.project}/zones/{zone}/{what}/{name}' was not found"
        )

    def _instance(self, params: dict[str, str]) -> dict[str, Any]:
        inst = self.instances.get(params["instance"])
        if inst is None or _last(inst["zone"]) != params["zone"]:
            raise self._not_found(params["zone"], params["instance"])
        return inst

    def _check_insert(self, zone: str, body: dict[str, Any]) -> None:
        problems = validate(COMPUTE, "Instance", body, "resource")
        if problems:
            raise ApiError(400, "Invalid JSON payload received. " + "; ".join(problems[:5]))
        name = body.get("name") or ""
        if not NAME_RE.match(name):
            raise ApiError(400, f"Invalid value for field 'resource.name': '{name}'. Must be a "
                                "match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
        if name in self.instances:
            raise ApiError(409, f"The resource 'projects/{self.project}/zones/{zone}/instances/"
                                f"{name}' already exists")
        for key, value in (body.get("labels") or {}).items():
            if not LABEL_KEY_RE.match(key) or not LABEL_VALUE_RE.match(str(value)):
                raise ApiError(400, f"Invalid value for field 'resource.labels': '{key}={value}'. "
                                    "Label keys and values may contain only lowercase letters, "
                                    "digits, '_' and '-'.")
        machine = body.get("machineType") or ""
        if _zone_of_link(machine) != zone:
            raise ApiError(400, f"Invalid value for field 'resource.machineType': '{machine}'. "
                                f"Machine type must be a URL of zone {zone}.")
        for i, disk in enumerate(body.get("disks") or []):
            disk_type = (disk.get("initializeParams") or {}).get("diskType")
            if disk_type and _zone_of_link(disk_type) not in (None, zone):
                raise ApiError(400, f"Invalid value for field 'resource.disks[{i}].initializeParams"
                                    f".diskType': '{disk_type}'. Disk type is in another zone.")
        nics = body.get("networkInterfaces") or []
        for i, nic in enumerate(nics):
            subnet = nic.get("subnetwork", "")
            if subnet.split("projects/")[-1] != self.subnet_link.split("projects/")[-1]:
                raise ApiError(400, f"Invalid value for field 'resource.networkInterfaces[{i}]"
                                    f".subnetwork': '{subnet}'. The referenced subnetwork "
                                    "resource cannot be found.")
        for acct in body.get("serviceAccounts") or []:
            if acct.get("email") not in self.service_accounts:
                raise ApiError(400, f"The resource 'projects/{self.project}/serviceAccounts/"
                                    f"{acct.get('email')}' was not found")
        sched = body.get("scheduling") or {}
        if sched.get("provisioningModel") == "SPOT" and (
            sched.get("automaticRestart") or sched.get("onHostMaintenance") == "MIGRATE"
        ):
            raise ApiError(400, "Invalid value for field 'resource.scheduling': Spot VMs need "
                                "onHostMaintenance TERMINATE and automaticRestart false.")

    def _new_instance(self, name: str, zone: str, body: dict, ip: str | None) -> dict[str, Any]:
        nics = []
        for i, nic in enumerate(body.get("networkInterfaces") or []):
            nics.append({
                **nic,
                "name": f"nic{i}",
                "network": f"{GCE}/projects/{self.project}/global/networks/"
                           f"{_last(self.subnet_link).removesuffix('-subnet')}-vpc",
                "subnetwork": self.subnet_link,
                "networkIP": ip if i == 0 else self.allocate_ip(),
                "fingerprint": _fingerprint(),
            })
        if not nics:
            nics = [{"name": "nic0", "subnetwork": self.subnet_link,
                     "networkIP": ip or self.allocate_ip()}]
        machine = body.get("machineType", f"zones/{zone}/machineTypes/e2-standard-2")
        return {
            **body,
            "kind": "compute#instance",
            "id": str(next(self._ids) * 7919),
            "name": name,
            "zone": self.zone_url(zone),
            "machineType": f"{self.zone_url(zone)}/machineTypes/{_last(machine)}",
            "status": "PROVISIONING",
            "networkInterfaces": nics,
            "labels": dict(body.get("labels") or {}),
            "labelFingerprint": _fingerprint(),
            "metadata": {**(body.get("metadata") or {}), "fingerprint": _fingerprint()},
            "selfLink": f"{self.zone_url(zone)}/instances/{name}",
            "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime()),
        }

    def _insert(self, params: dict[str, str], body: Any) -> dict[str, Any]:
        zone = params["zone"]
        if not isinstance(body, dict):
            raise ApiError(400, "Invalid JSON payload received: expected an Instance object")
        self._check_insert(zone, body)
        exhausted = self.exhausted.get(zone)
        message = (f"The zone 'projects/{self.project}/zones/{zone}' does not have enough "
                   "resources available to fulfill the request.  Try a different zone, or try "
                   "again later.")
        if exhausted == "insert":
            raise ApiError(503, message, reason="ZONE_RESOURCE_POOL_EXHAUSTED")
        wanted = ((body.get("networkInterfaces") or [{}])[0]).get("networkIP")
        inst = self._new_instance(body["name"], zone, body, self.allocate_ip(wanted))
        self.instances[body["name"]] = inst
        error = ({"errors": [{"code": "ZONE_RESOURCE_POOL_EXHAUSTED", "message": message}]}
                 if exhausted == "operation" else None)
        return self._op_json(self._operation(zone, "insert", body["name"], error))

    def _operation_get(self, params: dict[str, str], body: Any) -> dict[str, Any]:
        op = self.operations.get(params["operation"])
        if op is None or op.zone != params["zone"]:
            raise self._not_found(params["zone"], params["operation"], "operations")
        if op.status != "DONE":
            op.polls += 1
            self._step(op)
        return self._op_json(op)

    def _list(self, params: dict[str, str], body: Any) -> dict[str, Any]:
        try:
            keep = compile_filter(params.get("filter"))
        except FilterError as e:
            raise ApiError(400, f"Invalid value for field 'filter': '{params.get('filter')}'. "
                                f"{e}") from None
        items = [i for i in self.instances.values()
                 if _last(i["zone"]) == params["zone"] and keep(i)]
        out: dict[str, Any] = {
            "kind": "compute#instanceList",
            "id": f"projects/{self.project}/zones/{params['zone']}/instances",
            "selfLink": f"{self.zone_url(params['zone'])}/instances",
        }
        if items:  # GCE leaves `items` out of an empty list
            out["items"] = items
        return out

    def _get(self, params: dict[str, str], body: Any) -> dict[str, Any]:
        return self._instance(params)

    def _set_labels(self, params: dict[str, str], body: Any) -> dict[str, Any]:
        inst = self._instance(params)
        problems = validate(COMPUTE, "InstancesSetLabelsRequest", body, "resource")
        if problems:
            raise ApiError(400, "Invalid JSON payload received. " + "; ".join(problems[:5]))
        if body.get("labelFingerprint") != inst["labelFingerprint"]:
            raise ApiError(412, "Labels fingerprint either invalid or resource labels have "
                                "changed", reason="conditionNotMet")
        for key, value in (body.get("labels") or {}).items():
            if not LABEL_KEY_RE.match(key) or not LABEL_VALUE_RE.match(str(value)):
                raise ApiError(400, f"Invalid value for field 'labels': '{key}={value}'")
        inst["labels"] = dict(body.get("labels") or {})
        inst["labelFingerprint"] = _fingerprint()
        return self._op_json(self._operation(params["zone"], "setLabels", inst["name"]))

    def _delete(self, params: dict[str, str], body: Any) -> dict[str, Any]:
        inst = self._instance(params)
        inst["status"] = "STOPPING"
        return self._op_json(self._operation(params["zone"], "delete", inst["name"]))

    def _project_get(self, params: dict[str, str], body: Any) -> dict[str, Any]:
        return {"projectNumber": self.project_number, "projectId": self.project,
                "lifecycleState": "ACTIVE", "name": self.project,
                "createTime": "2026-01-01T00:00:00.000Z"}

    def _service_account_get(self, params: dict[str, str], body: Any) -> dict[str, Any]:
        email = params["name"].rsplit("/", 1)[-1]
        if email not in self.service_accounts:
            raise ApiError(404, f"Unknown service account {email}")
        return {"name": f"projects/{self.project}/serviceAccounts/{email}",
                "projectId": self.project, "uniqueId": str(abs(hash(email)) % 10**21),
                "email": email, "etag": "MDEwMjE5MjA=", "oauth2ClientId": "1"}

    def _subnetwork_get(self, params: dict[str, str], body: Any) -> dict[str, Any]:
        link = f"projects/{params['project']}/regions/{params['region']}/subnetworks/" \
               f"{params['subnetwork']}"
        if not self.subnet_link.endswith(link):
            raise ApiError(404, f"The resource '{link}' was not found")
        return {"kind": "compute#subnetwork", "name": params["subnetwork"],
                "region": f"{GCE}/projects/{self.project}/regions/{self.region}",
                "ipCidrRange": str(self.cidr),
                "gatewayAddress": str(next(self.cidr.hosts())),
                "privateIpGoogleAccess": True, "selfLink": self.subnet_link}


_HANDLERS: dict[str, Callable[[FakeCloud, dict, Any], Any]] = {
    "compute.instances.insert": FakeCloud._insert,
    "compute.instances.get": FakeCloud._get,
    "compute.instances.list": FakeCloud._list,
    "compute.instances.setLabels": FakeCloud._set_labels,
    "compute.instances.delete": FakeCloud._delete,
    "compute.zoneOperations.get": FakeCloud._operation_get,
    "compute.subnetworks.get": FakeCloud._subnetwork_get,
    "cloudresourcemanager.projects.get": FakeCloud._project_get,
    "iam.projects.serviceAccounts.get": FakeCloud._service_account_get,
}
SERVED = frozenset(_HANDLERS)
