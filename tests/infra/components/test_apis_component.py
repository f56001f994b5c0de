"""infra/components/apis.py: the APIs are on before anything that uses them."""

from __future__ import annotations

from infra.components.apis import SERVICES

SERVICE = "gcp:projects/service:Service"


def test_every_api_enabled_and_left_on_at_destroy(default):
    services = default.of_type(SERVICE)
    assert sorted(r["inputs"]["service"] for r in services) == sorted(SERVICES)
    assert {f"{s}.googleapis.com" for s in (
        "compute", "iam", "iap", "secretmanager", "cloudresourcemanager", "storage", "logging",
    )} == set(SERVICES)
    for r in services:
        assert r["inputs"]["disableOnDestroy"] is False
        assert r["inputs"]["project"] == "ray-gcp-test-1234"
        assert default.parent_name(r) == "apis"


def test_every_other_resource_waits_for_every_api(each_scenario):
    rec = each_scenario
    service_urns = {r["urn"] for r in rec.of_type(SERVICE)}
    for r in rec.resources:
        if r["custom"] and r["type"] != SERVICE:
            missing = service_urns - set(r["dependencies"])
            assert not missing, f"{r['type']} {r['name']} does not wait for {sorted(missing)}"


def test_image_lookup_waits_for_the_apis_and_is_the_only_invoke(each_scenario):
    service_urns = sorted(r["urn"] for r in each_scenario.of_type(SERVICE))
    (depends_on,) = each_scenario.data["invoke_depends_on"]
    assert set(service_urns) <= set(depends_on)
    assert each_scenario.data["invokes"] == [
        {"token": "gcp:compute/getImage:getImage",
         "args": {"family": "debian-12", "project": "debian-cloud"}}
    ]
