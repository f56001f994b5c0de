"""The VM path of autostop, end to end on this machine.

The watcher's own code path (``cluster.autostop.Watcher`` with
``cluster.autostop_vm``'s probe and stop) runs against:

* the cluster's VMs: Ray's real node provider (ours, ``ReadOnlyGCPNodeProvider``)
  over the recording Compute Engine fake (tests/cluster/fakes.py), holding a
  head and a worker created through that provider with Ray's labels;
* the Ray state: the session's real local cluster, reached through the SSH
  tunnel code with a stand-in ``ssh`` on PATH that forwards the ``-L`` ports it
  is given to the local cluster's dashboard and GCS (no sshd here);
* the stop: the real ``ray down -y <cluster.yaml>`` (Ray's CLI command, in this
  process, because the Compute Engine fake lives here; its SSH to the fake head
  is the one step that cannot run and is refused, as Ray tolerates);
* the power-off: recorded, never run.

Timeouts are seconds here, the same code as the minutes on a VM. The same
sequence after a real `ray up` on namespace VMs, with real SSH and the
service's own command, is in the end-to-end test (tests/e2e/test_e2e.py,
`make e2e`: needs root).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from unittest import mock

import pytest
import yaml
from ray.autoscaler._private import commands
from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    STATUS_UP_TO_DATE,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

from cluster import autostop_vm, idle
from cluster.autostop import StateFile, StopFailed, VmConfig, Watcher
from cluster.render import render_gcp
from cluster.spec import ClusterSpec
from tests.cluster.conftest import FACTS
from tests.cluster.test_idle_local import stop_job, submit_job

pytestmark = pytest.mark.cluster

TIMEOUT_S = 4.0
CHECK_EVERY_S = 0.5

FAKE_SSH = textwrap.dedent('''\
    #!{python}
    """Stand-in for ssh -N -L ...: forwards each -L port to FAKE_SSH_TARGETS[remote port]."""
    import json, os, socket, sys, threading
    with open(os.environ["FAKE_SSH_LOG"], "a") as log:
        log.write(json.dumps(sys.argv[1:]) + "\\n")
    mode = os.environ.get("FAKE_SSH_MODE", "forward")
    if mode == "timeout":
        sys.stderr.write("ssh: connect to host " + sys.argv[-1].split("@")[1]
                         + " port 22: Connection timed out\\n")
        sys.exit(255)
    if mode == "denied":
        sys.stderr.write(sys.argv[-1] + ": Permission denied (publickey).\\n")
        sys.exit(255)
    targets = json.loads(os.environ["FAKE_SSH_TARGETS"])
    args = sys.argv[1:]
    specs = [args[i + 1] for i, a in enumerate(args) if a == "-L"]

    def pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve(listener, target):
        host, port = target.rsplit(":", 1)
        while True:
            client, _ = listener.accept()
            upstream = socket.create_connection((host, int(port)))
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

    threads = []
    for spec in specs:
        bind, lport, _rhost, rport = spec.split(":")
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((bind, int(lport)))
        listener.listen(16)
        t = threading.Thread(target=serve, args=(listener, targets[rport]), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
''')


class Vm:
    """The provider VM's side: config, secrets, state dir, fake ssh, recorded power-off."""

    def __init__(self, tmp: Path, cluster, fake_gcp, monkeypatch, *, token: str | None = None):
        self.tmp = tmp
        self.cluster = cluster
        self.fake = fake_gcp
        self.logins: tuple[str, ...] = ()
        self.poweroffs: list[list[str]] = []
        self.log: list[str] = []
        secrets = tmp / "secrets"
        secrets.mkdir(mode=0o700)
        (secrets / "ssh-private-key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n")
        (secrets / "ray-auth-token").write_text(token or cluster.token())
        for f in secrets.iterdir():
            f.chmod(0o600)
        # The config exactly as rendered for the provider VM (its file mounts name VM
        # paths that do not exist here; `ray down` does not read them).
        (tmp / "cluster.yaml").write_text(yaml.safe_dump(render_gcp(ClusterSpec(), FACTS)))
        self.config = VmConfig(
            timeout_minutes=5,  # not used: the watcher below is given seconds
            cluster_yaml=tmp / "cluster.yaml",
            secrets_dir=secrets,
            state_dir=tmp / "state",
            ray=Path(sys.executable).with_name("ray"),
        )
        self.config.state_dir.mkdir()
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        (bin_dir / "ssh").write_text(FAKE_SSH.format(python=sys.executable))
        (bin_dir / "ssh").chmod(0o755)
        self.ssh_log = tmp / "ssh.jsonl"
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("FAKE_SSH_LOG", str(self.ssh_log))
        gcs_port = cluster.address.rsplit(":", 1)[1]
        dash_port = cluster.dashboard_url.rsplit(":", 1)[1]
        monkeypatch.setenv("FAKE_SSH_TARGETS", json.dumps(
            {"8265": f"127.0.0.1:{dash_port}", "6379": f"127.0.0.1:{gcs_port}"}))
        monkeypatch.setenv("FAKE_SSH_MODE", "forward")
        self.monkeypatch = monkeypatch

    # ---- the cluster's VMs in the Compute Engine fake --------------------------------------

    def ray_up_nodes(self) -> None:
        """A head and a worker, created through Ray's provider with Ray's own labels."""
        from ray.autoscaler._private.providers import _get_node_provider

        # As `ray up` runs it: our read-only bootstrap checks the launcher key in ~/.ray-gcp.
        home = autostop_vm.prepare_launcher_home(self.config)
        with mock.patch.dict(os.environ, {"HOME": str(home)}):
            resolved = commands._bootstrap_config(self.config.cluster_config(),
                                                  no_config_cache=True)
        provider = _get_node_provider(resolved["provider"], resolved["cluster_name"],
                                      use_cache=False)
        name = resolved["cluster_name"]
        for kind, node_type in ((NODE_KIND_HEAD, resolved["head_node_type"]),
                                (NODE_KIND_WORKER, "cpu-worker")):
            provider.create_node(
                copy.deepcopy(resolved["available_node_types"][node_type]["node_config"]),
                {TAG_RAY_NODE_KIND: kind, TAG_RAY_NODE_NAME: f"ray-{name}-{kind}",
                 TAG_RAY_USER_NODE_TYPE: node_type, TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE},
                1,
            )
        assert len(self.fake.instances) == 2

    # ---- what the systemd service runs, with the fakes plugged in ---------------------------

    def run(self, argv, **kwargs):
        if argv[0] == "loginctl":
            if argv[1] == "list-sessions":
                out = "".join(f"{i} 1000 {u} seat0 pts/{i}\n" for i, u in enumerate(self.logins))
            else:
                out = "\n\n".join(f"Name={u}\nClass=user\nState=active" for u in self.logins)
            return subprocess.CompletedProcess(argv, 0, out, "")
        if argv[0] == "systemctl":
            self.poweroffs.append(list(argv))
            return subprocess.CompletedProcess(argv, 0, "", "")
        raise AssertionError(f"unexpected command {argv}")

    def ray_down(self) -> str:
        """`ray down -y <cluster.yaml>`: Ray's CLI command, with the HOME the service sets."""
        from ray.scripts.scripts import down

        home = autostop_vm.prepare_launcher_home(self.config)
        with mock.patch.dict(os.environ, {"HOME": str(home)}), \
                mock.patch.object(commands, "exec_cluster",
                                  side_effect=RuntimeError("no SSH to a fake VM")), \
                mock.patch.object(commands, "POLL_INTERVAL", 0):
            down.main(["-y", str(self.config.cluster_yaml)], standalone_mode=False)
        return "ray down -y (Ray's CLI command)"

    def watcher(self, **overrides) -> Watcher:
        kwargs = {
            "timeout_s": TIMEOUT_S,
            "probe": autostop_vm.VmProbe(self.config, run=self.run),
            "stop": autostop_vm.VmStop(self.config, ray_down=self.ray_down),
            "store": StateFile(self.config.state_file),
            "log": self.log.append,
            "epoch": "this-boot",
            "after_stop": lambda: autostop_vm.power_off(run=self.run),
        }
        kwargs.update(overrides)
        return Watcher(**kwargs)

    def watch_over(self, watcher: Watcher, seconds: float) -> list[idle.WatchState]:
        """Check until the checks span `seconds` of the watcher's clock (however slow each is)."""
        states = [watcher.check()]
        while states[-1].checked_at - states[0].checked_at < seconds:
            time.sleep(CHECK_EVERY_S)
            states.append(watcher.check())
        return states

    def watch(self, watcher: Watcher, *, until: float, attempts=None) -> list[idle.WatchState]:
        """Check every CHECK_EVERY_S until stopped, `attempts()` holds or `until` (monotonic)."""
        states = []
        while time.monotonic() < until:
            states.append(watcher.check())
            if states[-1].status == idle.STOPPED or (attempts and attempts()):
                break
            time.sleep(CHECK_EVERY_S)
        return states


@pytest.fixture
def vm(tmp_path, local_cluster, fake_gcp, monkeypatch, ssh_control_dirs):
    return Vm(tmp_path, local_cluster, fake_gcp, monkeypatch)


def wait_idle(cluster, timeout=180):
    from cluster.idle_probe import gather

    deadline = time.monotonic() + timeout
    while idle.assess(gather(cluster.dashboard_url, cluster.token())).status != idle.IDLE:
        assert time.monotonic() < deadline, "the shared cluster did not become idle"
        time.sleep(0.5)


def test_a_job_running_past_the_timeout_keeps_everything_then_idle_stops_it_all(
        vm, local_cluster, capsys):
    """While a job runs, three timeouts pass and nothing is deleted; once it ends, the
    watcher runs the real `ray down` after one timeout, every VM of the cluster is gone,
    and only then is the power-off invoked. Measures idle -> everything deleted."""
    vm.ray_up_nodes()
    wait_idle(local_cluster)
    submission = submit_job(local_cluster)  # through the Jobs API, as `ray job submit`
    watcher = vm.watcher()
    try:
        busy = vm.watch_over(watcher, 1.5 * TIMEOUT_S)
        assert busy[-1].status == idle.BUSY and submission in busy[-1].reason, busy[-1].reason
        assert busy[-1].checked_at - busy[0].checked_at >= TIMEOUT_S  # past the timeout
        assert len(vm.fake.instances) == 2 and vm.poweroffs == []
        assert all(s.status in (idle.BUSY, idle.IDLE) for s in busy)
    finally:
        stop_job(local_cluster, submission)
    states = vm.watch(watcher, until=time.monotonic() + 10 * TIMEOUT_S + 120)
    final = states[-1]
    assert final.status == idle.STOPPED, [s.log_line() for s in states[-5:]]
    deleted_at = time.time()
    assert vm.fake.instances == {}
    assert vm.poweroffs == [["systemctl", "poweroff"]]
    # One journal line per check, then what the stop did.
    checks = [line for line in vm.log if not line.startswith("stopped:")]
    assert len(checks) == len(busy) + len(states)
    assert vm.log[-1].startswith("stopped: ray down -y ")
    assert "no VM of the cluster is left" in vm.log[-1]
    assert StateFile(vm.config.state_file).load().status == idle.STOPPED
    # The quiet time began at the job's end at the earliest, and lasted the whole timeout.
    assert final.quiet_since is not None and final.checked_at - final.quiet_since >= TIMEOUT_S
    with capsys.disabled():
        print(f"\n[autostop VM path] timeout {TIMEOUT_S:.0f} s; quiet since the job ended -> "
              f"every VM deleted in {deleted_at - final.quiet_since:.1f} s "
              f"(ray down and the check it left nothing: "
              f"{deleted_at - final.checked_at:.1f} s)")
    # Every check tunnelled to the head VM's internal IP as Ray's SSH user, forwarding the
    # dashboard and the GCS from the head's loopback.
    tunnels = [json.loads(line) for line in vm.ssh_log.read_text().splitlines()]
    assert len(tunnels) >= len(busy) + len(states) - 1
    for argv in tunnels:
        assert argv[-1].startswith("ray@10.0.0.") and "-N" in argv
        forwards = [argv[i + 1] for i, a in enumerate(argv) if a == "-L"]
        assert sorted(f.split(":", 2)[2] for f in forwards) == ["127.0.0.1:6379",
                                                                 "127.0.0.1:8265"]


def test_an_unreachable_head_counts_as_idle_with_the_reason_logged(vm, monkeypatch):
    vm.ray_up_nodes()
    monkeypatch.setenv("FAKE_SSH_MODE", "timeout")
    states = vm.watch(vm.watcher(), until=time.monotonic() + 10 * TIMEOUT_S + 120)
    assert states[-1].status == idle.STOPPED
    assert states[0].status == idle.UNREACHABLE
    assert "no SSH connection to the head 10.0.0." in states[0].reason
    assert "Connection timed out" in vm.log[0]
    assert vm.fake.instances == {} and vm.poweroffs == [["systemctl", "poweroff"]]


def test_no_head_at_all_powers_the_provider_vm_off_after_the_timeout(vm):
    states = vm.watch(vm.watcher(), until=time.monotonic() + 10 * TIMEOUT_S + 120)
    assert states[0].status == idle.ABSENT and "no head VM of Ray cluster" in states[0].reason
    assert states[-1].status == idle.STOPPED
    assert vm.poweroffs == [["systemctl", "poweroff"]]


def test_an_operator_logged_in_keeps_it_up(vm):
    vm.ray_up_nodes()
    vm.logins = ("alice_example_com",)
    states = vm.watch_over(vm.watcher(), 1.5 * TIMEOUT_S)
    assert {s.status for s in states} == {idle.BUSY}
    assert "alice_example_com is logged in to the provider VM" in states[-1].reason
    assert len(vm.fake.instances) == 2 and vm.poweroffs == []


@pytest.mark.parametrize("failure", ["wrong token", "refused key"])
def test_state_it_cannot_read_counts_as_busy(tmp_path, local_cluster, fake_gcp, monkeypatch,
                                             ssh_control_dirs, failure):
    """A token that does not match (the dashboard answers 403) or a key the head refuses:
    never stopped, every check logged as an error."""
    vm = Vm(tmp_path, local_cluster, fake_gcp, monkeypatch,
            token="0" * 64 if failure == "wrong token" else None)
    if failure == "refused key":
        monkeypatch.setenv("FAKE_SSH_MODE", "denied")
    vm.ray_up_nodes()
    states = vm.watch_over(vm.watcher(), 1.5 * TIMEOUT_S)
    assert {s.status for s in states} == {idle.ERROR}
    # Ray answers a token that does not match with 403.
    needle = ("HTTP 403" if failure == "wrong token" else "refused the launcher key")
    assert needle in states[-1].reason and "counted as busy" in states[-1].reason
    assert len(vm.fake.instances) == 2 and vm.poweroffs == []


def test_a_failed_ray_down_does_not_power_off_and_is_retried(vm):
    vm.ray_up_nodes()
    attempts = []

    def failing_down() -> str:
        attempts.append(time.monotonic())
        raise StopFailed("ray down exited 1: quota exceeded")

    watcher = vm.watcher(stop=autostop_vm.VmStop(vm.config, ray_down=failing_down),
                         probe=lambda: idle.ClusterSnapshot(time.time(), head="absent"))
    states = vm.watch(watcher, until=time.monotonic() + 4 * TIMEOUT_S,
                      attempts=lambda: len(attempts) >= 2)
    assert states[-1].status == idle.STOP_FAILED and len(attempts) >= 2
    assert "retried at the next check" in states[-1].reason
    assert vm.poweroffs == [] and len(vm.fake.instances) == 2


def test_ray_down_that_leaves_a_vm_is_a_failed_stop(vm):
    vm.ray_up_nodes()
    stop = autostop_vm.VmStop(vm.config, ray_down=lambda: "pretended")
    with pytest.raises(StopFailed, match="left 2 VM"):
        stop(idle.WatchState(idle.IDLE, "", time.time(), 1.0, 0.0))


def test_check_once_with_autostop_off_does_nothing(tmp_path, capsys):
    config = VmConfig(0, tmp_path / "c.yaml", tmp_path, tmp_path / "state", tmp_path / "ray")
    assert autostop_vm.check_once(config) == 0
    assert "autostop is off" in capsys.readouterr().out
    assert not (tmp_path / "state").exists()
