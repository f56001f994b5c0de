"""The provider VM's autostop check, run on the harness's provider machine.

``ProviderAutostop(harness, timeout_minutes)`` lays out what the boot script
(infra/provider_boot/autostop.sh) installs on the provider VM, inside the
provider machine's operator home: the settings file (``autostop.json``, the
same keys), the two secrets under their Secret Manager names (the launcher key
and the Ray token, copies of the harness's), and the state directory.

``check()`` runs what ``ray-gcp-autostop.service`` runs (its ``ExecStart``,
read from autostop.sh, with the unit's environment: the settings variable,
``HOME`` = the state directory, systemd's default ``PATH``): one real check,
which tunnels to the head over SSH, reads the cluster's state, and when the
cluster has been quiet for the timeout runs the real ``ray down -y``, checks
that no VM is left, and powers off. The test calls it every few seconds where
the timer runs it every minute.

Two commands are stand-ins, first on ``PATH``: ``systemctl`` records its
arguments and the time (the power-off is recorded, never done), and
``loginctl`` lists no session (the machine runs no systemd-logind; the
harness's commands are not logins).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time

from cluster import idle
from cluster.autostop import CONFIG_ENV, SECRET_RAY_AUTH_TOKEN, SECRET_SSH_PRIVATE_KEY, StateFile
from tests.e2e.harness import ROOT, VENV_BIN, Harness
from tests.e2e.machines import OPERATOR_HOME

SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNIT_SCRIPT = ROOT / "infra" / "provider_boot" / "autostop.sh"

STAND_IN_SYSTEMCTL = """#!/bin/sh
# Stand-in for systemctl (tests/e2e/autostop.py): records the call; powers nothing off.
printf '%s %s\\n' "$(date +%s.%N)" "$*" >> {record}
"""
STAND_IN_LOGINCTL = """#!/bin/sh
# Stand-in for loginctl (tests/e2e/autostop.py): no systemd-logind here, nobody logged in.
exit 0
"""


def unit_exec_start() -> list[str]:
    """The service's ExecStart as autostop.sh writes it, with this venv for ``$VENV``."""
    found = re.search(r'echo "ExecStart=\$VENV/(\S+) ([^"]*)"', UNIT_SCRIPT.read_text())
    assert found, f"no ExecStart=$VENV/... line in {UNIT_SCRIPT}"
    return [str(VENV_BIN.parent / found[1]), *found[2].split()]


class ProviderAutostop:
    def __init__(self, h: Harness, timeout_minutes: int):
        self.h = h
        self.timeout_minutes = timeout_minutes
        self.host = h.dir / "operator" / "autostop"  # OPERATOR_HOME/autostop in the machine
        inside = f"{OPERATOR_HOME}/autostop"
        secrets = self.host / "secrets"
        secrets.mkdir(parents=True, mode=0o700)
        launcher = h.dir / "operator" / ".ray-gcp"
        shutil.copyfile(launcher / "ray-launcher-key", secrets / SECRET_SSH_PRIVATE_KEY)
        shutil.copyfile(launcher / "ray-auth-token", secrets / SECRET_RAY_AUTH_TOKEN)
        for f in secrets.iterdir():
            f.chmod(0o600)
        (self.host / "state").mkdir(mode=0o755)
        bin_dir = self.host / "bin"
        bin_dir.mkdir()
        self.record = self.host / "systemctl.calls"
        (bin_dir / "systemctl").write_text(
            STAND_IN_SYSTEMCTL.format(record=f"{inside}/systemctl.calls"))
        (bin_dir / "loginctl").write_text(STAND_IN_LOGINCTL)
        for f in bin_dir.iterdir():
            f.chmod(0o755)
        settings = {  # the keys infra/provider_boot/autostop.sh writes
            "cluster_yaml": h.cluster_yaml, "idle_timeout_minutes": timeout_minutes,
            "ray": str(VENV_BIN / "ray"), "secrets_dir": f"{inside}/secrets",
            "state_dir": f"{inside}/state",
        }
        (self.host / "autostop.json").write_text(json.dumps(settings))
        self.unit_env = {CONFIG_ENV: f"{inside}/autostop.json", "HOME": f"{inside}/state",
                         "PATH": f"{inside}/bin:{SYSTEMD_PATH}", "LANG": "C.UTF-8"}
        self.store = StateFile(self.host / "state" / "state.json")
        self.journal: list[str] = []
        self.checks = 0
        # Never a real power-off: the stand-in must be the systemctl the check finds.
        rc, out = h.run(["sh", "-c", "command -v systemctl; command -v loginctl"],
                        name="autostop-which", env=self.unit_env, timeout=60)
        assert rc == 0 and out.split() == [f"{inside}/bin/systemctl", f"{inside}/bin/loginctl"], out

    @property
    def timeout_s(self) -> float:
        return self.timeout_minutes * 60.0

    def check(self) -> idle.WatchState:
        """One run of the service; its journal lines are kept in ``journal``."""
        self.checks += 1
        rc, out = self.h.run(unit_exec_start(), name=f"autostop-check-{self.checks}",
                             env=self.unit_env, timeout=1800)
        assert rc == 0, f"the autostop check exited {rc}:\n{out[-4000:]}"
        lines = [line for line in out.splitlines() if line.startswith("ray-gcp-autostop: ")]
        assert lines, f"the check logged nothing:\n{out[-3000:]}"
        self.journal += lines
        state = self.store.load()
        assert state is not None, f"the check saved no state:\n{out[-3000:]}"
        return state

    def status(self) -> str:
        """``ray-gcp-idle status`` (the command the boot script installs runs this)."""
        rc, out = self.h.run([sys.executable, "-I", "-m", "cluster.autostop", "status"],
                             name=f"autostop-status-{self.checks}", env=self.unit_env, timeout=120)
        assert rc == 0, out
        return out

    def systemctl_calls(self) -> list[tuple[float, str]]:
        """(when, arguments) of every call to the systemctl stand-in."""
        if not self.record.exists():
            return []
        return [(float(line.split(" ", 1)[0]), line.split(" ", 1)[1])
                for line in self.record.read_text().splitlines()]

    def watch(self, *, every: float, until) -> list[idle.WatchState]:
        """Check, then wait ``every`` seconds (the timer's OnUnitInactiveSec), until
        ``until(states)`` holds."""
        states = [self.check()]
        while not until(states):
            time.sleep(every)
            states.append(self.check())
        return states
