"""Run the Pulumi program offline the way Pulumi's language host runs it, and record everything.

Used by tests/infra (every assertion on resource inputs) and by `make demo`
(`python -m infra.offline` lists what `pulumi up` would create; what it reads
from `--set` and prints after the resources is infra/preview.py).

The language host (`pulumi-language-python-exec`) sets the config from the
engine, configures the runtime, chdirs to the project root and runs
``run_in_stack(lambda: runpy.run_path("infra/", run_name="__main__"))``.
`run_program` does exactly that, with the engine replaced by Pulumi's
`MockMonitor` (subclassed to also record each registration's parent and
dependencies) and `RecordingMocks` (records inputs and invokes, returns
plausible provider outputs).

The Pulumi runtime is process-global, so `run_isolated` runs each program in a
forked child of the test process: a pristine runtime per run, while the slow
imports (pulumi_gcp, ~4 s) are paid once, in the parent.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import pickle
import runpy
import select
import signal
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TEST_PROJECT = "ray-gcp-test-1234"
TEST_PROJECT_NUMBER = "123456789012"
TEST_STACK = "test"
GCE = "https://www.googleapis.com/compute/v1"
MOCK_IMAGE = f"{GCE}/projects/debian-cloud/global/images/debian-12-bookworm-v20260310"

# What the mocked providers return as generated secrets. Distinctive, so a
# test can search every input, metadata value and output for them.
MOCK_SSH_PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAAMOCKSSHPRIVATEKEYMATERIALdonotleak0123456789\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
MOCK_SSH_PUBLIC_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMockPublicKeyMockPublicKeyMockPublicKey0\n"
)
MOCK_RAY_AUTH_TOKEN = "MockRayAuthToken" + "x7" * 24  # 64 letters and digits
MOCK_SA_PRIVATE_KEY = "-----BEGIN PRIVATE KEY-----\nMOCKSERVICEACCOUNTKEYdonotleak\n-----END PRIVATE KEY-----\n"
MOCK_SA_KEY_FILE = json.dumps(
    {
        "type": "service_account",
        "project_id": TEST_PROJECT,
        "private_key_id": "mockkeyid0123",
        "private_key": MOCK_SA_PRIVATE_KEY,
        "client_email": f"ray-gcp-provider@{TEST_PROJECT}.iam.gserviceaccount.com",
    }
)
# Each secret and the forms it could leak in (raw, base64, one distinctive line).
SECRET_NEEDLES = {
    "ssh private key": [
        MOCK_SSH_PRIVATE_KEY.strip(),
        "MOCKSSHPRIVATEKEYMATERIALdonotleak",
        base64.b64encode(MOCK_SSH_PRIVATE_KEY.encode()).decode()[:40],
    ],
    "ray auth token": [MOCK_RAY_AUTH_TOKEN, base64.b64encode(MOCK_RAY_AUTH_TOKEN.encode()).decode()[:40]],
    "service-account key": [
        "MOCKSERVICEACCOUNTKEYdonotleak",
        base64.b64encode(MOCK_SA_KEY_FILE.encode()).decode()[:40],
    ],
}

SECRET_SIG = "4dabf18193072939515e22adb298388d"  # pulumi's marker of a secret value


def pulumi_yaml() -> dict[str, Any]:
    return yaml.safe_load((PROJECT_ROOT / "Pulumi.yaml").read_text())


def engine_config(overrides: dict[str, Any], *, project: str | None = TEST_PROJECT) -> dict[str, str]:
    """Config as the Pulumi engine hands it to the program: Pulumi.yaml's defaults
    plus the stack's values, every value a string (JSON for non-strings)."""

    def encode(v: Any) -> str:
        return v if isinstance(v, str) else json.dumps(v)

    config = {
        key: encode(decl["default"])
        for key, decl in pulumi_yaml()["config"].items()
        if "default" in decl
    }
    config.update({key: encode(v) for key, v in overrides.items()})
    if project is not None and "gcp:project" not in overrides:  # a given project wins
        config["gcp:project"] = project
    return config


# ---- mocks ----------------------------------------------------------------------


def _outputs(typ: str, inputs: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """Provider-computed outputs for the resource types the program uses."""
    project = inputs.get("project", TEST_PROJECT)
    name = inputs.get("name")
    out: dict[str, Any] = {}
    rid = None
    if typ == "gcp:serviceaccount/account:Account":
        email = f"{inputs['accountId']}@{project}.iam.gserviceaccount.com"
        out = {"email": email, "name": f"projects/{project}/serviceAccounts/{email}",
               "member": f"serviceAccount:{email}", "uniqueId": "1000000000000000000001"}
        rid = out["name"]
    elif typ == "gcp:compute/network:Network":
        rid = f"projects/{project}/global/networks/{name}"
        out = {"selfLink": f"{GCE}/{rid}"}
    elif typ == "gcp:compute/subnetwork:Subnetwork":
        rid = f"projects/{project}/regions/{inputs['region']}/subnetworks/{name}"
        out = {"selfLink": f"{GCE}/{rid}"}
    elif typ == "gcp:storage/bucket:Bucket":
        rid = name
        out = {"url": f"gs://{name}", "selfLink": f"https://www.googleapis.com/storage/v1/b/{name}"}
    elif typ == "gcp:secretmanager/secret:Secret":
        rid = f"projects/{project}/secrets/{inputs['secretId']}"
        out = {"name": f"projects/{TEST_PROJECT_NUMBER}/secrets/{inputs['secretId']}"}
    elif typ == "gcp:secretmanager/secretVersion:SecretVersion":
        secret_id = inputs["secret"].rsplit("/", 1)[1]
        rid = f"projects/{TEST_PROJECT_NUMBER}/secrets/{secret_id}/versions/1"
        out = {"name": rid, "version": "1"}
    elif typ == "tls:index/privateKey:PrivateKey":
        out = {"privateKeyOpenssh": MOCK_SSH_PRIVATE_KEY, "publicKeyOpenssh": MOCK_SSH_PUBLIC_KEY,
               "privateKeyPem": "MOCK-PEM", "publicKeyPem": "MOCK-PUBLIC-PEM"}
    elif typ == "random:index/randomPassword:RandomPassword":
        out = {"result": MOCK_RAY_AUTH_TOKEN}
    elif typ == "gcp:serviceaccount/key:Key":
        out = {"privateKey": base64.b64encode(MOCK_SA_KEY_FILE.encode()).decode(),
               "name": "projects/p/serviceAccounts/sa/keys/mockkeyid0123"}
    elif typ == "gcp:container/cluster:Cluster":
        rid = f"projects/{project}/locations/{inputs['location']}/clusters/{name}"
        endpoints = dict(inputs.get("controlPlaneEndpointsConfig") or {})
        endpoints["dnsEndpointConfig"] = {
            **endpoints.get("dnsEndpointConfig", {}), "endpoint": mock_dns_endpoint(inputs["location"])}
        out = {"controlPlaneEndpointsConfig": endpoints, "selfLink": f"https://container.googleapis.com/v1/{rid}"}
    elif typ == "gcp:container/nodePool:NodePool":
        rid = f"{inputs['location']}/{inputs['cluster']}/{name}"
    elif typ == "random:index/randomString:RandomString":
        out = {"result": "r4nd0m"[: int(inputs.get("length", 6))]}
    elif typ == "gcp:projects/iAMCustomRole:IAMCustomRole":
        rid = f"projects/{project}/roles/{inputs['roleId']}"
        out = {"name": rid}
    elif typ == "gcp:compute/instance:Instance":
        rid = f"projects/{project}/zones/{inputs['zone']}/instances/{name}"
        out = {"selfLink": f"{GCE}/{rid}", "instanceId": "4000000000000000001"}
    return rid, {**inputs, **out}


def mock_dns_endpoint(location: str) -> str:
    """What GKE reports as a cluster's DNS-based control-plane endpoint."""
    return f"gke-0123456789abcdef0123456789abcdef-{TEST_PROJECT_NUMBER}.{location}.gke.goog"


def _image_result(args: dict[str, Any]) -> dict[str, Any]:
    return {
        "selfLink": MOCK_IMAGE,
        "name": MOCK_IMAGE.rsplit("/", 1)[1],
        "family": args.get("family"),
        "project": args.get("project"),
        "id": "projects/debian-cloud/global/images/" + MOCK_IMAGE.rsplit("/", 1)[1],
        "status": "READY",
    }


def _make_classes():
    """Defined lazily so importing this module does not import pulumi."""
    import pulumi
    from pulumi.runtime import rpc
    from pulumi.runtime.mocks import MockMonitor
    from pulumi.runtime.proto import resource_pb2

    class RecordingMocks(pulumi.runtime.Mocks):
        def __init__(self) -> None:
            self.new_resource_calls = 0
            self.calls: list[dict[str, Any]] = []

        def new_resource(self, args: pulumi.runtime.MockResourceArgs):
            self.new_resource_calls += 1
            rid, outputs = _outputs(args.typ, dict(args.inputs))
            return rid or f"{args.name}-id", outputs

        def call(self, args: pulumi.runtime.MockCallArgs):
            self.calls.append({"token": args.token, "args": dict(args.args)})
            if args.token == "gcp:compute/getImage:getImage":
                return _image_result(args.args)
            if args.token == "gcp:organizations/getProject:getProject":
                project = args.args.get("projectId", TEST_PROJECT)
                return {"projectId": project, "number": TEST_PROJECT_NUMBER,
                        "name": project, "id": f"projects/{project}"}
            raise NotImplementedError(f"no mock for invoke {args.token}")

    class RecordingMonitor(MockMonitor):
        """MockMonitor that also keeps what MockResourceArgs leaves out."""

        def __init__(self, mocks: RecordingMocks) -> None:
            super().__init__(mocks)
            self.registrations: list[dict[str, Any]] = []
            self.outputs_registered: list[str] = []
            self.invoke_depends_on: list[list[str]] = []

        def RegisterResource(self, request):
            response = super().RegisterResource(request)
            if request.type != "pulumi:pulumi:Stack":
                self.registrations.append(
                    {
                        "urn": response.urn,
                        "type": request.type,
                        "name": request.name,
                        "custom": bool(request.custom),
                        "parent": request.parent,
                        "dependencies": sorted(request.dependencies),
                        "provider": request.provider,
                        "additional_secret_outputs": sorted(request.additionalSecretOutputs),
                        "inputs": rpc.deserialize_properties(request.object),
                    }
                )
            return response

        def GetDeploymentInfo(self, request):
            # Also advertise invoke dependencies, so the SDK sends an invoke's
            # depends_on (as a real engine does) and we can record it.
            info = super().GetDeploymentInfo(request)
            info.supportedFeatures.append(resource_pb2.RESOURCE_MONITOR_FEATURE_INVOKE_DEPENDS_ON)
            return info

        def Invoke(self, request):
            self.invoke_depends_on.append(sorted(request.dependsOn))
            return super().Invoke(request)

        def RegisterResourceOutputs(self, request):
            self.outputs_registered.append(request.urn)
            return super().RegisterResourceOutputs(request)

    return RecordingMocks, RecordingMonitor


def _plain(value: Any) -> Any:
    """JSON-safe copy (resource references and other objects become their repr)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def run_program(config: dict[str, str], *, stack: str = TEST_STACK) -> dict[str, Any]:
    """Run infra/ like the language host, in this process. Returns the recording."""
    import pulumi
    from pulumi.runtime import settings as runtime_settings
    from pulumi.runtime.mocks import MockEngine, MockSettings
    from pulumi.runtime.stack import run_in_stack

    recording_mocks, recording_monitor = _make_classes()
    mocks = recording_mocks()
    monitor = recording_monitor(mocks)
    log_records: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            log_records.append(f"{record.levelname}: {record.getMessage()}")

    logger = logging.getLogger(f"pulumi-test-engine-{stack}")
    logger.addHandler(_Collect())
    logger.setLevel(logging.DEBUG)
    logger.propagate = False

    # What pulumi-language-python-exec does, minus the gRPC connections.
    pulumi.runtime.set_all_config(config, [])
    runtime_settings.configure(
        MockSettings(
            monitor=monitor,
            monitor_features=set(monitor.GetDeploymentInfo(None).supportedFeatures),
            engine=MockEngine(logger),
            project="ray-gcp",
            stack=stack,
            dry_run=False,
            organization="organization",
            callbacks=None,
        )
    )
    os.chdir(PROJECT_ROOT)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    error = None
    outputs: dict[str, Any] = {}
    stack_holder: list[Any] = []

    def program() -> None:
        # The stack lives in run_in_stack's context; keep it to read the exports.
        stack_holder.append(runtime_settings.get_root_resource())
        runpy.run_path("infra/", run_name="__main__")

    try:
        loop.run_until_complete(run_in_stack(program))
        for key, value in stack_holder[0].outputs.items():
            out = pulumi.Output.from_input(value)
            outputs[key] = {
                "value": loop.run_until_complete(out.future()),
                "secret": loop.run_until_complete(out.is_secret()),
            }
    except Exception as e:  # noqa: BLE001 (recorded for the test to assert on)
        error = {
            "type": type(e).__name__,
            "is_run_error": isinstance(e, pulumi.RunError),
            "message": str(e),
            "traceback": traceback.format_exc(),
        }
    finally:
        loop.close()
    return _plain(
        {
            "resources": monitor.registrations,
            "outputs_registered": monitor.outputs_registered,
            "new_resource_calls": mocks.new_resource_calls,
            "invokes": mocks.calls,
            "invoke_depends_on": monitor.invoke_depends_on,
            "outputs": outputs,
            "error": error,
            "log": log_records,
        }
    )


def warm_up() -> None:
    """Import, in the parent, what every forked run would otherwise import again."""
    import warnings

    with warnings.catch_warnings():
        # pulumi_gcp warns about its own deprecated aliases while loading a module.
        warnings.simplefilter("ignore", DeprecationWarning)
        _import_program_modules()


def _import_program_modules() -> None:
    import pulumi_gcp as gcp
    import pulumi_kubernetes as k8s

    import infra.program  # noqa: F401

    for k8s_module, k8s_names in {
        k8s: "Provider",
        k8s.helm.v3: "Release",
        k8s.core.v1: "Namespace ServiceAccount Secret ConfigMap",
        k8s.networking.v1: "NetworkPolicy",
        k8s.apiextensions: "CustomResource",
    }.items():
        for k8s_name in k8s_names.split():
            getattr(k8s_module, k8s_name)
    for module, names in {
        gcp.compute: "Instance Network Subnetwork Router RouterNat Firewall get_image_output",
        gcp.projects: "Service IAMMember",
        gcp.serviceaccount: "Account IAMMember Key",
        gcp.storage: "Bucket BucketIAMMember",
        gcp.secretmanager: "Secret SecretVersion SecretIamMember",
        gcp.container: "Cluster NodePool",
        gcp.organizations: "get_project_output",
    }.items():
        for name in names.split():
            getattr(module, name)


def run_isolated(
    config: dict[str, str], *, stack: str = TEST_STACK, timeout: float = 120
) -> dict[str, Any]:
    """run_program in a forked child: a fresh Pulumi runtime for every run."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: run, send the recording, leave without pytest's teardown
        os.close(read_fd)
        try:
            result: Any = run_program(config, stack=stack)
        except BaseException:  # noqa: BLE001
            result = {"harness_error": traceback.format_exc()}
        with os.fdopen(write_fd, "wb") as pipe:
            pickle.dump(result, pipe)
        os._exit(0)
    os.close(write_fd)
    chunks = []
    deadline = time.monotonic() + timeout
    with os.fdopen(read_fd, "rb") as pipe:
        while True:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([pipe], [], [], max(remaining, 0))
            if not ready:
                os.kill(pid, signal.SIGKILL)  # our own child, by pid
                os.waitpid(pid, 0)
                raise TimeoutError(f"the program run took longer than {timeout} s")
            chunk = os.read(pipe.fileno(), 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    data = b"".join(chunks)
    _, status = os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"program run died without a result (wait status {status})")
    result = pickle.loads(data)
    if "harness_error" in result:
        raise RuntimeError("the test harness itself failed:\n" + result["harness_error"])
    return result


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG) == "1b47061264138c4ac30d75fd1eb44270"


def unsecret(value: Any) -> Any:
    """The plain value of a (possibly) secret-wrapped input."""
    if is_secret(value):
        return unsecret(value["value"])
    if isinstance(value, dict):
        return {k: unsecret(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unsecret(v) for v in value]
    return value


# ---- a readable inventory, for people -------------------------------------------


def default_config(overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """The engine config of a stack that set only gcp:project (and `overrides`)."""
    return engine_config(overrides or {})


def inventory_lines(result: dict[str, Any]) -> list[str]:
    """One line per resource, children indented under their component.

    Sorted by name, then type, at every level: registration order is
    asynchronous, and two runs with the same settings must list the same text.
    """
    if result.get("error"):
        raise RuntimeError(result["error"]["message"])
    resources = result["resources"]
    urns = {r["urn"] for r in resources}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for r in resources:
        parent = r.get("parent") if r.get("parent") in urns else None
        children.setdefault(parent, []).append(r)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for r in sorted(children.get(parent, []), key=lambda r: (r["name"], r["type"])):
            lines.append(f"{'  ' * depth}{r['name']}  ({r['type']})")
            walk(r["urn"], depth + 1)

    walk(None, 0)
    return lines


def main(argv: list[str] | None = None) -> int:
    import argparse

    from infra import preview

    p = argparse.ArgumentParser(
        prog="python -m infra.offline",
        description="List what `pulumi up` would create, by running infra/ under Pulumi's "
        "mocks (no cloud, no Pulumi CLI). Secrets and IDs are mock values. Prints the "
        "resources (sorted), then the effective settings and the cluster they render.",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a stack setting with its namespace, e.g. --set ray-gcp:spotWorkers=true, "
                        "as `pulumi config set` takes it; a list as JSON "
                        "(--set 'ray-gcp:fallbackZones=[]') or one item per index as "
                        "`pulumi config set --path` takes it "
                        "(--set 'ray-gcp:operators[0]=user:alice@example.com'); "
                        "--set gcp:project=ID previews another project (repeatable)")
    args = p.parse_args(argv)
    items = []
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set takes KEY=VALUE, got {item!r}")
        items.append((key, value))
    overrides, problems = preview.parse_set_items(items)
    problems += preview.check_overrides(overrides)
    if problems:
        print("invalid --set (nothing was run):\n  " + "\n  ".join(problems))
        return 1
    config = default_config(overrides)
    result = run_isolated(config)
    if result.get("error"):
        print(result["error"]["message"])
        return 1
    print("\n".join(inventory_lines(result)))
    print(f"{len(result['resources'])} resources; outputs: {', '.join(sorted(result['outputs']))}")
    print("\n".join(preview.summary_lines(result, config, set(overrides))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
