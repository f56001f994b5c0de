"""One end-to-end run: a fake project, a provider machine, and `ray` run from it.

``Harness(run_dir).start()`` builds, in this order:

1. the machines' offline package sources (``tests.e2e.prewarm``);
2. what ``pulumi up`` would leave on the provider VM: a launcher key pair and a
   Ray auth token under the operator's ``~/.ray-gcp/``, the code bundle at
   ``/opt/ray-gcp/src``, and ``~/cluster.yaml``: the output of
   ``python -m cluster render --target gcp`` (``--spec`` with the test's
   cluster, ``--facts`` with the launcher's real public key and the emulator's
   bucket as the stack's bucket, where the nodes ship their logs) plus only
   ``provider.api_endpoints`` and ``provider.gcp_credentials``;
3. the fake project (``FakeCloud``): its subnet, the head and worker service
   accounts, the provider VM as an instance, an OAuth token;
4. a switch and the provider machine, then, inside the provider machine's
   network, the fake API (``http://<provider ip>/``, as a Private Service
   Connect endpoint inside the VPC would be) and a GCS emulator.

Every instance the fake API creates boots as a machine of its own
(``Fleet.boot``) and every deleted one is killed (``Fleet.kill``).
``run()``/``popen()`` execute a command inside the provider machine as its
operator (``HOME=/home/operator``, nothing of this process's environment).
``stop()`` tears everything down and returns what is left on the host
(``tests.e2e.leaks``), which must be nothing.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import yaml

from cluster.bundle import build_bundle
from cluster.render import example_gcp_facts
from cluster.spec import ClusterSpec
from tests.e2e import leaks
from tests.e2e.fake_gce import FakeCloud
from tests.e2e.fake_gce_http import in_netns, serve
from tests.e2e.machines import OPERATOR_HOME, WHEELS_IN_VM, Fleet, sh
from tests.e2e.prewarm import prewarm

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PROVIDER = "ray-gcp-provider"
SUBNET_CIDR = "10.10.0.0/20"  # infra/settings.py's default subnet_cidr
API_PORT, GCS_PORT = 80, 9023
BUCKET = "ray-gcp-e2e"
# Two Spot workers of 2 CPUs, zone fallback on: what the test needs. Idle workers stay
# 10 minutes, so that autostop's `ray down` still finds workers to delete.
E2E_SPEC = ClusterSpec.from_settings(
    max_workers=2, spot_workers=True, worker_machine_type="n2-standard-2",
    idle_timeout_minutes=10,
)
FIRST_UID = 4242  # the machines' login user (only in their private /etc/passwd)


def free_uid() -> int:
    taken = set()
    for path in ("/etc/passwd", "/etc/group"):
        taken |= {int(line.split(":")[2]) for line in Path(path).read_text().splitlines()
                  if line.count(":") >= 3}
    uid = FIRST_UID
    while uid in taken or uid + 500 in taken:
        uid += 1
    return uid


def e2e_unavailable() -> str | None:
    """Why this machine cannot run the test (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (network, PID and mount namespaces)"
    missing = [tool for tool in ("ip", "unshare", "nsenter", "ssh", "ssh-keygen", "rsync", "mount")
               if shutil.which(tool) is None]
    missing += [p for p in ("/usr/sbin/sshd", "/usr/bin/python3.11") if not Path(p).exists()]
    if missing:
        return f"missing {', '.join(missing)} (Debian: openssh-server rsync python3.11 python3-venv)"
    probe = f"rgprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    return None


class Harness:
    def __init__(self, run_dir: Path, *, spec: ClusterSpec = E2E_SPEC, log=print,
                 op_step_s: float = 2.0):
        self.dir, self.spec, self.log, self.op_step_s = Path(run_dir), spec, log, op_step_s
        self.run_id = f"rg{os.getpid() % 100000}x{secrets.token_hex(2)}"
        self.before = leaks.HostSnapshot.capture()
        self.fleet: Fleet | None = None
        self.server = None
        self.provider = None
        self._emulator: subprocess.Popen | None = None
        self._popens: list[subprocess.Popen] = []
        self._left: list[str] | None = None  # stop()'s answer, once stopped

    # ---- building -----------------------------------------------------------------

    def start(self) -> Harness:
        self.dir.mkdir(parents=True, exist_ok=True)
        uid = free_uid()
        sources = prewarm(ROOT, uid, progress=self.log)
        facts = example_gcp_facts()
        self.zones = [facts.zone, *facts.fallback_zones]
        self.api_token = "ya29.e2e-" + secrets.token_hex(16)
        self.cloud = FakeCloud(
            project=facts.project, region=facts.region, zones=self.zones,
            subnetwork=facts.subnetwork, cidr=SUBNET_CIDR,
            service_accounts={facts.head_service_account, facts.worker_service_account},
            token=self.api_token, op_step_s=self.op_step_s,
        )
        provider = self.cloud.add_running_instance(PROVIDER, facts.zone,
                                                   {"ray-gcp-role": "provider"})
        self.provider_ip = provider["networkInterfaces"][0]["networkIP"]
        self.emulator_url = f"http://{self.provider_ip}:{GCS_PORT}"
        self.fleet = Fleet(
            self.run_id, self.dir, int(SUBNET_CIDR.split("/")[1]),
            uv_cache=sources / "uv", wheelhouse=sources / "wheels", uid=uid,
            session_env={"UV_OFFLINE": "1", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS_IN_VM,
                         "STORAGE_EMULATOR_HOST": self.emulator_url},
            zone_domain=f"c.{facts.project}.internal",
        )
        self.fleet.create()
        self.cloud.on_running = self.fleet.boot
        self.cloud.on_gone = self.fleet.kill

        home = self.dir / "operator"
        secrets_dir = home / ".ray-gcp"
        secrets_dir.mkdir(parents=True)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ray-launcher",
           "-f", str(secrets_dir / "ray-launcher-key"))
        self.ray_token = secrets.token_hex(32)
        (secrets_dir / "ray-auth-token").write_text(self.ray_token)
        (secrets_dir / "ray-auth-token").chmod(0o600)
        bundle = self.dir / "bundle"
        bundle.mkdir()
        with tarfile.open(fileobj=io.BytesIO(build_bundle(ROOT)), mode="r:gz") as tar:
            tar.extractall(bundle, filter="data")
        self.provider = self.fleet.start_provider(PROVIDER, self.provider_ip, bundle, home)
        self.server = serve(self.cloud, host=self.provider_ip, port=API_PORT,
                            netns=self.provider.netns)
        self._start_emulator()

        public_key = (secrets_dir / "ray-launcher-key.pub").read_text().strip()
        # The stack's bucket is the emulator's: the job's data and every node's shipped logs.
        self.config = self.render(
            facts.model_copy(update={"ssh_public_key": public_key, "bucket": BUCKET}),
            self.server.endpoints)
        self.config["provider"]["gcp_credentials"] = {
            "type": "credentials_token", "credentials": self.api_token}
        self.cluster_yaml = f"{OPERATOR_HOME}/cluster.yaml"
        (home / "cluster.yaml").write_text(yaml.safe_dump(self.config, sort_keys=True))
        (home / "cluster.yaml").chmod(0o600)
        return self

    def render(self, facts, endpoints: dict[str, str]) -> dict:
        """``python -m cluster render --target gcp`` with this run's spec, facts and
        ``--api-endpoint`` for each API (what ``ray-gcp:apiEndpoints`` sets)."""
        (self.dir / "spec.yaml").write_text(yaml.safe_dump(self.spec.model_dump(mode="json")))
        (self.dir / "facts.json").write_text(facts.model_dump_json())
        flags = [f for api, url in sorted(endpoints.items()) for f in ("--api-endpoint", f"{api}={url}")]
        out = subprocess.run(
            [sys.executable, "-m", "cluster", "render", "--target", "gcp", *flags,
             "--spec", str(self.dir / "spec.yaml"), "--facts", str(self.dir / "facts.json")],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )
        return yaml.safe_load(out.stdout)

    def _start_emulator(self) -> None:
        self._emulator = self.popen(
            [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", self.provider_ip,
             "--port", str(GCS_PORT), "--in-memory", "--default-bucket", BUCKET, "-q"],
            "gcs-emulator")
        deadline = time.monotonic() + 60
        while True:
            try:
                self.gcs_get(f"/storage/v1/b/{BUCKET}")
                return
            except OSError:
                if self._emulator.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the GCS emulator did not start; see "
                                       f"{self.dir / 'logs' / 'gcs-emulator.log'}") from None
                time.sleep(0.2)

    # ---- using it -------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": OPERATOR_HOME, "USER": "root", "LOGNAME": "root", "LANG": "C.UTF-8",
            "STORAGE_EMULATOR_HOST": self.emulator_url,
            # No __pycache__ in this checkout from the provider's ray and python -m cluster.
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def _argv(self, argv: list[str], env: dict[str, str] | None = None) -> list[str]:
        return [*self.provider.nsenter(), "env", "-i",
                *(f"{k}={v}" for k, v in (self.env() if env is None else env).items()), *argv]

    def popen(self, argv: list[str], name: str, env: dict[str, str] | None = None
              ) -> subprocess.Popen:
        """Start a command inside the provider machine; output to logs/<name>.log. ``env``:
        its whole environment (default: the operator's, ``env()``)."""
        logs = self.dir / "logs"
        logs.mkdir(exist_ok=True)
        with open(logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(self._argv(argv, env), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        self._popens.append(proc)
        return proc

    def run(self, argv: list[str], name: str, timeout: float = 1200,
            env: dict[str, str] | None = None) -> tuple[int, str]:
        """Run a command inside the provider machine to its end: (exit status, output)."""
        proc = self.popen(argv, name, env)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            rc = -9
        return rc, self.output(name)

    def output(self, name: str) -> str:
        return (self.dir / "logs" / f"{name}.log").read_text(errors="replace")

    def ray(self, *args: str, name: str, timeout: float = 1200) -> tuple[int, str]:
        return self.run([str(VENV_BIN / "ray"), *args], name, timeout)

    def gcs_get(self, path: str) -> bytes:
        """GET from the GCS emulator (inside the provider's network)."""
        with in_netns(self.provider.netns), \
                urllib.request.urlopen(self.emulator_url + path, timeout=30) as resp:
            return resp.read()

    def gcs_text(self, key: str) -> str | None:
        quoted = urllib.request.quote(key, safe="")
        try:
            return self.gcs_get(f"/download/storage/v1/b/{BUCKET}/o/{quoted}?alt=media").decode()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def machine_root(self, name: str) -> Path:
        """A machine's file system as its processes see it (/proc/PID/root)."""
        return Path(f"/proc/{self.fleet.machines[name].pid1}/root")

    def processes_of(self, name: str) -> dict[int, str]:
        """pid -> command line of every process of a machine (by its PID namespace)."""
        m = self.fleet.machines[name]
        out = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and leaks.ns_inode(f"/proc/{entry}/ns/pid") == m.pid_inode:
                try:
                    cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                out[int(entry)] = cmd.decode(errors="replace").strip()
        return out

    # ---- teardown ---------------------------------------------------------------------

    def stop(self, keep: bool = False) -> list[str]:
        """Stop everything this run started; returns what is left on the host. The run
        directory (logs) is removed unless ``keep``, RAY_GCP_E2E_KEEP=1 or traces are left."""
        if self._left is not None:
            return self._left
        for proc in self._popens:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, 9)
                except ProcessLookupError:
                    pass
                proc.wait(30)
        if self.server is not None:
            self.server.stop()
        # inode -> when its machine was stopped (see leaks._processes: inodes are reused)
        net: dict[int | None, int | None] = {}
        pid: dict[int | None, int | None] = {}
        if keep and self.fleet is not None:
            self._save_ray_logs()
        if self.fleet is not None:
            self.cloud.on_running = lambda instance: None
            self.fleet.stop_all()
            self.cloud.wait_hooks(60)
            self.fleet.stop_all()  # a boot that was still under way
            for m in self.fleet.history:
                net[m.net_inode] = m.stopped_tick
                pid[m.pid_inode] = m.stopped_tick
        net.pop(None, None)
        pid.pop(None, None)
        accounts = set()
        if self.fleet is not None:
            accounts = {"google-sudoers", *self.fleet.account_names}
            accounts |= {str(i) for i in range(self.fleet.uid, self.fleet.uid + 8)}
            accounts |= {str(self.fleet.uid + 500)}
        left = self._left = leaks.leftovers(self.before, self.run_id, self.dir, net, pid,
                                            accounts)
        if not left and not keep and os.environ.get("RAY_GCP_E2E_KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)
        elif self.dir.exists():  # keep the logs, not the machines' venvs (~1 GB each)
            for disk in (self.dir / "machines").glob("*/disk"):
                shutil.rmtree(disk, ignore_errors=True)
        return left

    def _save_ray_logs(self) -> None:
        """Each machine's Ray logs (in its private /tmp) into its directory, for a post-mortem."""
        for name, m in list(self.fleet.machines.items()):
            root = Path(f"/proc/{m.pid1}/root")
            try:
                session = os.readlink(root / "tmp/ray/session_latest").lstrip("/")
                shutil.copytree(root / session / "logs", m.dir / "ray-logs",
                                ignore=shutil.ignore_patterns("*.sock"))
            except OSError:
                continue

    def summary(self) -> str:
        calls = {}
        for c in self.cloud.calls:
            calls[c.method] = calls.get(c.method, 0) + 1
        return json.dumps(calls, indent=1, sort_keys=True)
