"""infra/components/network.py: private VPC, NAT, and no Ray port open to the outside."""

from __future__ import annotations

import ipaddress

FIREWALL = "gcp:compute/firewall:Firewall"
# Ray's ports (notes/ray-gcp-launcher.md): GCS, dashboard + Jobs API, client,
# dashboard agent, object manager, worker ports.
RAY_PORTS = {6379, 8265, 10001, 52365, 8076} | set(range(10002, 20000))
ALL_PORTS = set(range(65536))
IAP = "35.235.240.0/20"


def _ports(allow: dict) -> set[int]:
    if allow["protocol"] not in ("tcp", "udp", "sctp", "all", "6", "17"):
        return set()  # icmp, esp...: no ports
    if allow["protocol"] == "all" or not allow.get("ports"):
        return ALL_PORTS
    ports: set[int] = set()
    for spec in allow["ports"]:
        low, _, high = spec.partition("-")
        ports |= set(range(int(low), int(high or low) + 1))
    return ports


def external_exposure(rec) -> dict[str, set[int]]:
    """Per ingress rule admitting anything from outside the subnet: the ports it opens."""
    subnet = ipaddress.ip_network(rec.one("gcp:compute/subnetwork:Subnetwork")["inputs"]["ipCidrRange"])
    exposed = {}
    for rule in rec.of_type(FIREWALL):
        inputs = rule["inputs"]
        if inputs.get("direction", "INGRESS") != "INGRESS" or inputs.get("denies"):
            continue
        sources = inputs.get("sourceRanges") or []
        if not sources and not inputs.get("sourceServiceAccounts") and not inputs.get("sourceTags"):
            sources = ["0.0.0.0/0"]  # GCE's default source when none is given
        outside = [s for s in sources if not ipaddress.ip_network(s).subnet_of(subnet)]
        if outside:
            exposed[rule["name"]] = set().union(*(_ports(a) for a in inputs.get("allows", [])))
    return exposed


def test_no_ray_port_reachable_from_outside_the_vpc(each_scenario):
    exposure = external_exposure(each_scenario)
    assert exposure, "expected at least the IAP SSH rule"
    for rule, ports in exposure.items():
        assert not ports & RAY_PORTS, f"{rule} exposes Ray ports {sorted(ports & RAY_PORTS)[:10]}"
        assert ports == {22}, f"{rule} opens {sorted(ports)[:10]}... from outside, expected only 22"


def test_ssh_from_outside_only_to_the_provider_vm_from_iap_and_configured_ranges(programs):
    for scenario, extra in (("default", []), ("ssh-ranges", ["203.0.113.0/24", "10.20.0.0/16"])):
        rec = programs(scenario)
        provider = rec.outputs["serviceAccounts"]["provider"]
        sources = set()
        for rule in rec.of_type(FIREWALL):
            inputs = rule["inputs"]
            if inputs.get("sourceRanges"):
                assert inputs["targetServiceAccounts"] == [provider]
                assert inputs["allows"] == [{"protocol": "tcp", "ports": ["22"]}]
                assert inputs["logConfig"] == {"metadata": "INCLUDE_ALL_METADATA"}
                sources |= set(inputs["sourceRanges"])
        assert sources == {IAP, *extra}


def test_internal_rules_match_our_accounts_only(each_scenario):
    emails = each_scenario.outputs["serviceAccounts"]
    nodes = [emails["head"], emails["worker"]]
    internal = {r["name"]: r["inputs"] for r in each_scenario.of_type(FIREWALL)
                if not r["inputs"].get("sourceRanges")}
    assert set(internal) == {"network-allow-ray-internal", "network-allow-provider-to-ray"}
    assert internal["network-allow-ray-internal"]["sourceServiceAccounts"] == nodes
    assert internal["network-allow-ray-internal"]["targetServiceAccounts"] == nodes
    assert internal["network-allow-provider-to-ray"]["sourceServiceAccounts"] == [emails["provider"]]
    assert internal["network-allow-provider-to-ray"]["targetServiceAccounts"] == nodes
    for inputs in internal.values():
        assert inputs["allows"] == [{"protocol": "all"}]
        assert "sourceTags" not in inputs and "targetTags" not in inputs


def test_custom_vpc_private_subnet_and_nat(each_scenario):
    rec = each_scenario
    vpc = rec.one("gcp:compute/network:Network")
    assert vpc["inputs"]["autoCreateSubnetworks"] is False
    subnet = rec.one("gcp:compute/subnetwork:Subnetwork")["inputs"]
    assert subnet["privateIpGoogleAccess"] is True
    assert subnet["network"] == f"projects/ray-gcp-test-1234/global/networks/{vpc['inputs']['name']}"
    assert ipaddress.ip_network(subnet["ipCidrRange"]).is_private
    router = rec.one("gcp:compute/router:Router")["inputs"]
    nat = rec.one("gcp:compute/routerNat:RouterNat")["inputs"]
    assert router["region"] == nat["region"] == subnet["region"]
    assert nat["router"] == router["name"]
    assert nat["sourceSubnetworkIpRangesToNat"] == "LIST_OF_SUBNETWORKS"
    assert nat["subnetworks"] == [{
        "name": f"projects/ray-gcp-test-1234/regions/{subnet['region']}/subnetworks/{subnet['name']}",
        "sourceIpRangesToNats": ["ALL_IP_RANGES"]}]
    assert rec.outputs["network"] == vpc["inputs"]["name"]
    assert rec.outputs["subnetwork"] == subnet["name"]


def test_subnet_follows_settings(programs):
    subnet = programs("us-central1").one("gcp:compute/subnetwork:Subnetwork")["inputs"]
    assert (subnet["region"], subnet["ipCidrRange"], subnet["name"]) == (
        "us-central1", "172.20.0.0/16", "research-subnet")
