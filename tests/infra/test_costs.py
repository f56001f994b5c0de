"""infra/costs.py: one price table, and the README's cost section generated from it."""

from __future__ import annotations

import pytest

from infra import costs
from infra import offline as harness
from infra.settings import parse_settings

README = (harness.PROJECT_ROOT / "README.md").read_text()


def test_readme_cost_section_is_the_generated_one():
    """Regenerate with `python -c 'from infra.costs import readme_section; print(readme_section())'`
    after a price or default changes."""
    assert costs.readme_section() in README


def test_the_rows_price_the_default_deployment():
    settings = parse_settings({}, harness.TEST_PROJECT)
    assert settings.region == costs.REGION  # the prices are this region's
    vm = costs.vm_rows()
    assert settings.provider_machine_type in vm[0].what
    assert settings.head_machine_type in vm[3].what and settings.worker_machine_type in vm[4].what
    # A month of the provider VM: its machine for 730 h and its 20 GB disk.
    assert vm[0].usd_per_month == pytest.approx(
        costs.PRICES["e2-medium"].usd * 730 + costs.PRICES["pd-balanced"].usd * 20)


def test_every_price_names_its_source_and_unit():
    for name, price in costs.PRICES.items():
        assert price.usd > 0 and price.per and price.source, name
    assert costs.PRICES_AS_OF in costs.readme_section()
