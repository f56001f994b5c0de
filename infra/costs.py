"""What the default deployment costs per month in asia-northeast3, from one price table.

`PRICES` is the only place prices live: the README's cost section is generated
from it (`readme_section()`; a test keeps the README equal), and anything else
that quotes money (e.g. what stopping an idle head saves) should use
`monthly_usd` with these prices rather than its own numbers.

Prices are on-demand USD list prices for asia-northeast3 (Seoul), without
taxes, committed-use or free-tier credits unless a row says so. Sources, read
offline (there is no internet on the machines this was written on):
- Compute Engine machine types, pd-balanced disks and Cloud Storage Standard:
  github.com/Cyclenerd/google-cloud-pricing-cost-calculator `pricing.yml`,
  generated 2025-03-06 from Google's Cloud Billing Catalog API;
- Cloud NAT: cloud.google.com/nat/pricing; GKE: cloud.google.com/kubernetes-engine/pricing;
  Secret Manager: cloud.google.com/secret-manager/pricing (stored copies, undated;
  consistent with the catalog above where both give a price).
Check the current prices (cloud.google.com/products/calculator) before a budget
decision: they change.

No Pulumi import: importable from anywhere (cluster/, bench/, tests).
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_AS_OF = "2025-03-06"
REGION = "asia-northeast3"
HOURS_PER_MONTH = 730  # Google's calculator: 365 * 24 / 12
# GKE's default node boot disk (pd-balanced since GKE 1.24); infra/components/gke.py sets none.
GKE_DEFAULT_BOOT_DISK_GB = 100


@dataclass(frozen=True)
class Price:
    usd: float
    per: str  # "hour", "GB-month", "GiB", "version-month"
    source: str


_CATALOG = "Cloud Billing Catalog via Cyclenerd pricing.yml, 2025-03-06"
PRICES: dict[str, Price] = {
    "e2-medium": Price(0.04298286, "hour", _CATALOG),
    # N2 also earns a sustained-use discount of up to 20% for a full month
    # (the catalog's month price is $145.71); the table shows the list price.
    "n2-standard-4": Price(0.249436, "hour", _CATALOG),
    "pd-balanced": Price(0.13, "GB-month", _CATALOG),
    "gcs-standard": Price(0.023, "GB-month", _CATALOG),
    "nat-gateway-per-vm": Price(0.0014, "hour", "cloud.google.com/nat/pricing (up to 32 VMs)"),
    "nat-ip": Price(0.005, "hour", "cloud.google.com/nat/pricing (each NAT IP)"),
    "nat-data": Price(0.045, "GiB", "cloud.google.com/nat/pricing (in and out)"),
    "gke-cluster": Price(0.10, "hour", "cloud.google.com/kubernetes-engine/pricing"),
    "gke-free-tier-credit": Price(74.40, "month", "cloud.google.com/kubernetes-engine/pricing "
                                  "(per billing account; covers one zonal cluster)"),
    "secret-version": Price(0.06, "version-month", "cloud.google.com/secret-manager/pricing "
                            "(6 versions free per billing account)"),
}


def monthly_usd(item: str, quantity: float = 1) -> float:
    """A month (730 h) of `quantity` units of a priced item: machines, GB or versions."""
    price = PRICES[item]
    per_month = price.usd * HOURS_PER_MONTH if price.per == "hour" else price.usd
    return quantity * per_month


@dataclass(frozen=True)
class CostRow:
    what: str
    usd_per_month: float
    starts: str  # the step that creates it
    stops: str  # the step that stops its bill


def _vm_machine(machine_type: str, disk_gb: int) -> float:
    return monthly_usd(machine_type) + monthly_usd("pd-balanced", disk_gb)


def vm_rows() -> list[CostRow]:
    """platform vm with the default settings, running a whole month."""
    from cluster.spec import ClusterSpec
    from infra.components.provider_vm import BOOT_DISK_GB
    from infra.settings import Settings

    provider = Settings.model_fields["provider_machine_type"].default
    spec = ClusterSpec()
    head = spec.head
    (worker,) = spec.worker_types.values()
    return [
        CostRow(f"provider VM ({provider}, {BOOT_DISK_GB} GB pd-balanced)",
                _vm_machine(provider, BOOT_DISK_GB), "`pulumi up`", "`pulumi destroy`"),
        CostRow("Cloud NAT: gateway (per VM using it) and its IP",
                monthly_usd("nat-gateway-per-vm") + monthly_usd("nat-ip"),
                "`pulumi up`", "`pulumi destroy`"),
        CostRow("Secret Manager: 2 secret versions (SSH key, Ray token)",
                monthly_usd("secret-version", 2), "`pulumi up`", "`pulumi destroy`"),
        CostRow(f"Ray head ({head.machine_type}, {head.disk_size_gb} GB pd-balanced) + its NAT share",
                _vm_machine(head.machine_type, head.disk_size_gb)
                + monthly_usd("nat-gateway-per-vm"), "`ray up`", "`ray down`"),
        CostRow(f"each Ray worker ({worker.machine_type}, {worker.disk_size_gb} GB), while up",
                _vm_machine(worker.machine_type, worker.disk_size_gb)
                + monthly_usd("nat-gateway-per-vm"),
                "the autoscaler, for work", f"idle {spec.idle_timeout_minutes:g} min; `ray down`"),
    ]


def gke_rows() -> list[CostRow]:
    """platform gke with the default settings, running a whole month."""
    from cluster.spec import ClusterSpec
    from infra.components.gke import SYSTEM_POOL_NODES

    spec = ClusterSpec()
    head = spec.head
    (worker,) = spec.worker_types.values()
    node = _vm_machine(head.machine_type, GKE_DEFAULT_BOOT_DISK_GB) + monthly_usd("nat-gateway-per-vm")
    return [
        CostRow("GKE cluster fee (zonal; $0 if it is the billing account's only zonal cluster: "
                "the $74.40 free-tier credit)", monthly_usd("gke-cluster"),
                "`pulumi up`", "`pulumi destroy`"),
        CostRow(f"{SYSTEM_POOL_NODES} system nodes ({head.machine_type}, "
                f"{GKE_DEFAULT_BOOT_DISK_GB} GB pd-balanced; run the Ray head) + NAT share",
                SYSTEM_POOL_NODES * node, "`pulumi up`", "`pulumi destroy`"),
        CostRow("Cloud NAT IP", monthly_usd("nat-ip"), "`pulumi up`", "`pulumi destroy`"),
        CostRow(f"each worker node ({worker.machine_type}, {GKE_DEFAULT_BOOT_DISK_GB} GB), while up",
                _vm_machine(worker.machine_type, GKE_DEFAULT_BOOT_DISK_GB)
                + monthly_usd("nat-gateway-per-vm"),
                "GKE's autoscaler, for Ray Pods",
                "no Ray Pod needs it (idle workers go after "
                f"{spec.idle_timeout_minutes:g} min; a RayJob's cluster after its job)"),
    ]


def _table(rows: list[CostRow]) -> list[str]:
    lines = ["| what | $/month | billed from | until |", "|---|--:|---|---|"]
    lines += [f"| {r.what} | {r.usd_per_month:.2f} | {r.starts} | {r.stops} |" for r in rows]
    return lines


README_BEGIN = "<!-- costs: generated by infra/costs.py readme_section() -->"
README_END = "<!-- /costs -->"


def readme_section() -> str:
    """The README's cost tables (a test keeps README.md equal to this)."""
    vm, gke = vm_rows(), gke_rows()
    idle_stack = sum(r.usd_per_month for r in vm[:3])
    idle_head = idle_stack + vm[3].usd_per_month
    gke_idle = sum(r.usd_per_month for r in gke[:3])
    price = PRICES["n2-standard-4"].usd
    lines = [
        README_BEGIN,
        "",
        f"**Platform `vm`** (defaults; a month is {HOURS_PER_MONTH} h):",
        "",
        *_table(vm),
        "",
        (f"Idle after `pulumi up`: about **${idle_stack:.2f}/month**. After `ray up`, head idle, "
        f"no workers: **${idle_head:.2f}/month**. A worker adds ${price:.4f}/h plus its disk "
        "while it is up."),
        "",
        "**Platform `gke`**:",
        "",
        *_table(gke),
        "",
        (f"Idle: about **${gke_idle:.2f}/month** (${gke_idle - monthly_usd('gke-cluster'):.2f} "
        "within the free tier)."),
        "",
        (f"Both also pay Cloud NAT's ${PRICES['nat-data'].usd}/GiB for traffic it carries "
        "(package installs; on GKE the multi-GB Ray image each new node pulls), and "
        f"${PRICES['gcs-standard'].usd}/GB-month for what the bucket holds; `pulumi destroy` "
        "keeps the bucket (it is not force-destroyed: empty it yourself) and leaves the APIs "
        "enabled (free)."),
        "",
        (f"Prices: on-demand USD list prices in {REGION} as of {PRICES_AS_OF} (Google's billing "
        "catalog; Cloud NAT, GKE and Secret Manager from their pricing pages), without taxes "
        "or discounts; N2 machines also get up to 20% sustained-use discount in a full month. "
        "Sources and the table itself: `infra/costs.py`. Check the current prices before "
        "you budget."),
        "",
        README_END,
    ]
    return "\n".join(lines)
