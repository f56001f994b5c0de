"""Pulumi entry point (Pulumi.yaml: `main: infra/`): settings, resources, outputs.

Settings are validated before anything is declared, so a bad value creates nothing.
"""

import pulumi

from infra.program import build
from infra.settings import load_settings

for name, value in build(load_settings()).items():
    pulumi.export(name, value)
