"""`python -m cluster render --target gcp` is what `pulumi up` builds with default settings.

The preview (the CLI, run as a user runs it) and the stack output
`clusterConfig` of the offline Pulumi run with default settings must be the
same YAML, apart from the facts that exist only after deployment: the
service-account emails, the pinned image and the launcher's public key.
Those are replaced by markers on both sides; every other byte must agree
(spot or standard, subnet, bucket, zone, node types, commands...).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from cluster.render import EXAMPLE_IMAGE, EXAMPLE_SSH_PUBLIC_KEY
from infra import offline as harness

PSC_COMPUTE = "https://compute-ray.p.googleapis.com/compute/v1/"
PSC_IAM = "https://iam-ray.p.googleapis.com/"
_EMAIL = re.compile(r"[a-z][a-z0-9-]*@[a-z][a-z0-9-]*\.iam\.gserviceaccount\.com")


def _without_deploy_facts(text: str, image: str, ssh_key: str) -> str:
    text = text.replace(image, "<IMAGE>").replace(ssh_key.strip(), "<SSH-PUBLIC-KEY>")
    return _EMAIL.sub("<EMAIL>", text)


def render_cli(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "cluster", "render", "--target", "gcp", *args],
        cwd=harness.PROJECT_ROOT, capture_output=True, text=True, check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize(
    ("stack_settings", "render_args"),
    [
        ({}, []),
        # A non-default region: the preview's zone is the region's first, so the
        # stack's zone is set to that (the stack refuses a zone outside its region).
        ({"ray-gcp:region": "europe-west1", "ray-gcp:zone": "europe-west1-b"},
         ["--region", "europe-west1"]),
        # Private Service Connect endpoints: the setting and the CLI flags render alike.
        ({"ray-gcp:apiEndpoints": {"compute": PSC_COMPUTE, "iam": PSC_IAM}},
         ["--api-endpoint", f"compute={PSC_COMPUTE}", "--api-endpoint", f"iam={PSC_IAM}"]),
    ],
    ids=["default", "europe-west1", "api-endpoints"],
)
def test_render_gcp_is_the_stacks_cluster_config(stack_settings, render_args):
    stack = harness.run_isolated(harness.engine_config(stack_settings))
    assert stack["error"] is None, stack["error"]
    deployed = stack["outputs"]["clusterConfig"]["value"]
    preview = render_cli("--project", harness.TEST_PROJECT, *render_args)

    a = _without_deploy_facts(preview, EXAMPLE_IMAGE, EXAMPLE_SSH_PUBLIC_KEY)
    b = _without_deploy_facts(deployed, harness.MOCK_IMAGE, harness.MOCK_SSH_PUBLIC_KEY)
    assert a == b
    endpoints = yaml.safe_load(deployed)["provider"].get("api_endpoints")
    assert endpoints == stack_settings.get("ray-gcp:apiEndpoints")
    # The markers really replaced something on both sides (else the test proves little).
    for marker in ("<IMAGE>", "<SSH-PUBLIC-KEY>", "<EMAIL>"):
        assert marker in a and marker in b


def test_the_default_preview_shows_the_stack_defaults():
    """The facts the issue found wrong, spelled out (default settings: spotWorkers=false)."""
    cfg = yaml.safe_load(render_cli())
    worker = cfg["available_node_types"]["cpu-worker"]["node_config"]
    assert worker["scheduling"]["provisioningModel"] == "STANDARD"
    assert worker["networkInterfaces"][0]["subnetwork"].endswith("/subnetworks/ray-gcp-subnet")
    assert "RAY_GCP_BUCKET=my-ray-project-ray-gcp-io" in yaml.safe_dump(cfg["setup_commands"])
    assert cfg["cluster_name"] == "ray-gcp" and cfg["max_workers"] == 6
