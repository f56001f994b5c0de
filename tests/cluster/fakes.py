"""Recording fakes of the three Google API clients Ray's GCP code builds.

``FakeGcp().clients(provider_config)`` stands in for
``construct_clients_from_provider_config`` and returns ``(crm, iam, compute,
None)``. Every ``.execute()`` is recorded as ``Call(api, method, kwargs)``
(method = the chain of resource and method names, e.g.
``projects.serviceAccounts.get``), then answered by a handler. A call without
a handler fails the test: an unexpected write (setIamPolicy, create,
setCommonInstanceMetadata...) cannot slip through unnoticed.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httplib2
from googleapiclient.errors import HttpError


@dataclass(frozen=True)
class Call:
    api: str
    method: str
    kwargs: dict[str, Any]


def http_error(status: int, message: str = "") -> HttpError:
    body = json.dumps({"error": {"code": status, "message": message or f"HTTP {status}"}})
    return HttpError(httplib2.Response({"status": status}), body.encode())


class UnexpectedCall(AssertionError):
    pass


class _Chain:
    """Any attribute is a further step; calling it keeps kwargs; execute() records."""

    def __init__(self, fake: FakeGcp, api: str, path: tuple[str, ...], kwargs: dict):
        self._fake, self._api, self._path, self._kwargs = fake, api, path, kwargs
        # GCPCompute builds per-request AuthorizedHttp objects from this.
        self._http = SimpleNamespace(credentials=object())

    def __getattr__(self, name: str) -> _Chain:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Chain(self._fake, self._api, (*self._path, name), {})

    def __call__(self, **kwargs: Any) -> _Chain:
        return _Chain(self._fake, self._api, self._path, kwargs)

    def execute(self, **_ignored: Any) -> Any:
        return self._fake._answer(self._api, ".".join(self._path), self._kwargs)


@dataclass
class FakeGcp:
    """A GCP project that `pulumi up` created (or a broken one, for error tests)."""

    project: str = "my-ray-project"
    lifecycle_state: str = "ACTIVE"
    service_accounts: set[str] = field(default_factory=set)
    subnetworks: set[str] = field(default_factory=set)  # "project/region/name"
    calls: list[Call] = field(default_factory=list)
    extra_handlers: dict[tuple[str, str], Callable[[dict], Any]] = field(default_factory=dict)
    # Faults a zone answers with, as Compute Engine would:
    # insert_fault(zone, body) -> an HttpError that instances.insert raises, or None;
    # operation_fault(zone, body) -> the `error` of the insert's zone operation, or None
    # (the operation then ends DONE with that error and no VM exists).
    insert_fault: Callable[[str, dict], Exception | None] = lambda zone, body: None
    operation_fault: Callable[[str, dict], dict | None] = lambda zone, body: None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._op_ids = itertools.count(1)
        self.instances: dict[str, dict] = {}
        self.operations: dict[str, dict] = {}

    # The stand-in for construct_clients_from_provider_config.
    def clients(self, provider_config: dict) -> tuple[Any, Any, Any, None]:
        return (
            _Chain(self, "crm", (), {}),
            _Chain(self, "iam", (), {}),
            _Chain(self, "compute", (), {}),
            None,
        )

    def methods(self) -> list[tuple[str, str]]:
        return [(c.api, c.method) for c in self.calls]

    def _answer(self, api: str, method: str, kwargs: dict) -> Any:
        with self._lock:
            self.calls.append(Call(api, method, dict(kwargs)))
        handler = self.extra_handlers.get((api, method)) or _HANDLERS.get((api, method))
        if handler is None:
            raise UnexpectedCall(f"unexpected GCP API call {api}.{method}({kwargs})")
        return handler(self, kwargs)

    # ---- handlers (reads, plus the instance calls the head's autoscaler makes) ----

    def _project_get(self, kw: dict) -> dict:
        if kw["projectId"] != self.project:
            raise http_error(403, "The caller does not have permission")
        return {"projectId": self.project, "lifecycleState": self.lifecycle_state}

    def _sa_get(self, kw: dict) -> dict:
        email = kw["name"].rsplit("/", 1)[1]
        if email not in self.service_accounts:
            raise http_error(404, f"Unknown service account {email}")
        return {"email": email, "name": kw["name"]}

    def _subnet_get(self, kw: dict) -> dict:
        key = f"{kw['project']}/{kw['region']}/{kw['subnetwork']}"
        if key not in self.subnetworks:
            raise http_error(404, f"The resource {key} was not found")
        return {"name": kw["subnetwork"], "region": kw["region"]}

    def _zone_url(self, zone: str) -> str:
        return f"https://www.googleapis.com/compute/v1/projects/{self.project}/zones/{zone}"

    def _operation(self, zone: str, error: dict | None = None) -> dict:
        name = f"op-{next(self._op_ids)}"
        self.operations[name] = {"zone": zone, "error": error}
        return {"name": name, "status": "RUNNING", "zone": self._zone_url(zone)}

    def _insert(self, kw: dict) -> dict:
        body, zone = kw["body"], kw["zone"]
        fault = self.insert_fault(zone, body)
        if fault is not None:
            raise fault
        with self._lock:
            error = self.operation_fault(zone, body)
            if error is not None:
                return self._operation(zone, error)
            nics = [
                {**nic, "networkIP": f"10.0.0.{len(self.instances) + 2}"}
                for nic in body["networkInterfaces"]
            ]
            self.instances[body["name"]] = {
                **body,
                "status": "RUNNING",
                "zone": self._zone_url(zone),
                "networkInterfaces": nics,
                "labelFingerprint": "fp-0",
            }
            return self._operation(zone)

    def _operation_get(self, kw: dict) -> dict:
        op = self.operations[kw["operation"]]
        # Polling an operation in another zone is a 404 on GCE.
        if op["zone"] != kw["zone"]:
            raise http_error(404, f"operation {kw['operation']} not found in {kw['zone']}")
        out = {"name": kw["operation"], "status": "DONE", "zone": self._zone_url(op["zone"])}
        if op["error"] is not None:
            out["error"] = op["error"]
        return out

    def _in_zone(self, kw: dict) -> dict:
        """The instance kw names, if it lives in kw's zone (else GCE's 404)."""
        instance = self.instances.get(kw["instance"])
        if instance is None or instance["zone"] != self._zone_url(kw["zone"]):
            raise http_error(
                404,
                f"The resource 'projects/{self.project}/zones/{kw['zone']}/instances/"
                f"{kw['instance']}' was not found",
            )
        return instance

    def _get_instance(self, kw: dict) -> dict:
        return self._in_zone(kw)

    def _list(self, kw: dict) -> dict:
        # Only the `(labels.KEY = VALUE)` terms GCPCompute.list_instances sends.
        wanted = re.findall(r"\(labels\.([\w-]+) = ([^\s)]+)\)", kw.get("filter") or "")
        return {
            "items": [
                i
                for i in self.instances.values()
                if i["zone"] == self._zone_url(kw["zone"])
                and all(i.get("labels", {}).get(k) == v for k, v in wanted)
            ]
        }

    def _set_labels(self, kw: dict) -> dict:
        with self._lock:
            instance = self._in_zone(kw)
            if kw["body"].get("labelFingerprint") != instance["labelFingerprint"]:
                # GCE's answer to a stale or missing fingerprint (HTTP 412 conditionNotMet).
                raise http_error(
                    412, "Labels fingerprint either invalid or resource labels have changed"
                )
            instance["labels"] = dict(kw["body"]["labels"])
            instance["labelFingerprint"] = f"fp-{next(self._op_ids)}"
            return self._operation(kw["zone"])

    def _delete(self, kw: dict) -> dict:
        with self._lock:
            self._in_zone(kw)
            del self.instances[kw["instance"]]
            return self._operation(kw["zone"])

    def zone_of(self, name: str) -> str:
        return self.instances[name]["zone"].rsplit("/", 1)[1]


_HANDLERS: dict[tuple[str, str], Callable[[FakeGcp, dict], Any]] = {
    ("crm", "projects.get"): FakeGcp._project_get,
    ("iam", "projects.serviceAccounts.get"): FakeGcp._sa_get,
    ("compute", "subnetworks.get"): FakeGcp._subnet_get,
    ("compute", "instances.insert"): FakeGcp._insert,
    ("compute", "zoneOperations.get"): FakeGcp._operation_get,
    ("compute", "instances.list"): FakeGcp._list,
    ("compute", "instances.get"): FakeGcp._get_instance,
    ("compute", "instances.setLabels"): FakeGcp._set_labels,
    ("compute", "instances.delete"): FakeGcp._delete,
}


class RecordingProcessRunner:
    """Stands in for the `subprocess` module SSHCommandRunner uses."""

    def __init__(self):
        self.commands: list[list[str]] = []

    def check_call(self, cmd, *args, **kwargs):
        self.commands.append(list(cmd))
        return 0

    def check_output(self, cmd, *args, **kwargs):
        self.commands.append(list(cmd))
        return b""
