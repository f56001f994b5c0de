"""Fake machines: one set of Linux namespaces each, on a bridge with no uplink.

- ``Switch``: a network namespace holding only a bridge. Every machine's
  ``ens4`` is a veth whose other end is a bridge port there. Nothing connects
  the bridge to this host's network, and no machine has a default route, so
  traffic stays among the machines of one run.
- ``Machine``: a network namespace (its IP on the bridge, ``lo`` up) and a
  process ``vm_init.py`` running as PID 1 of new PID, mount and UTS namespaces
  (``unshare --pid --mount --uts --fork --mount-proc``). PID 1 mounts the
  machine's private ``/tmp``, ``/dev/shm``, ``/run``, ``/home`` and ``/etc``
  files, then runs sshd on port 22 of the machine's IP. ``stop()`` kills PID 1
  (the kernel then ends every process of the machine), waits for it and
  deletes the network namespace.
- ``Fleet``: the machines of one run, named uniquely (``<run id>-...``); turns a
  Compute Engine instance into a booted machine (``boot``) the way a GCE image
  does: the users and keys of the instance's ``ssh-keys`` metadata (ignored
  under ``enable-oslogin: TRUE``), passwordless sudo for them (GCE's
  google-sudoers group), ``/etc/hosts`` naming the instance, the hostname.

The machines share this host's root file system (binaries, Debian's
python3.11, dpkg's database) read-only in practice: the login user owns only
its home. Setup runs offline: a uv cache prewarmed on the host is the lower
layer of an overlay mounted at the user's ``~/.cache/uv``, the uv wheel for
pip is bind-mounted read-only, and sshd's ``SetEnv`` gives every session
``UV_OFFLINE=1`` and pip's offline switches (``Fleet.session_env``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.leaks import clock_ticks_now, ns_inode

VM_INIT = Path(__file__).with_name("vm_init.py")
WHEELS_IN_VM = "/run/ray-gcp-e2e/wheels"
MACHINE_DIR = "/run/machine"  # the machine's own directory, inside it
OPERATOR_HOME = "/home/operator"  # on the provider machine
# No name server: a lookup goes to the machine's own loopback and fails there, so
# no query is ever addressed to this host's resolver.
NO_NAME_SERVER = "# no name server: the machine has no uplink\n"


def sh(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def start_time(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def host_paths() -> tuple[str, ...]:
    """What a machine must still see of this host under its private /tmp: the checkout
    (commands run from it), this venv and the Python it was made from."""
    candidates = {str(Path(__file__).resolve().parents[2]), sys.prefix, sys.base_prefix,
                  str(Path(os.path.realpath(sys.executable)).parent)}
    paths = sorted(candidates)
    return tuple(p for p in paths if not any(p != q and Path(p).is_relative_to(q) for q in paths))


@dataclass
class Switch:
    netns: str
    prefixlen: int
    ports: int = 0

    def create(self) -> None:
        sh("ip", "netns", "add", self.netns)
        sh("ip", "-n", self.netns, "link", "set", "lo", "up")
        sh("ip", "-n", self.netns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.netns, "link", "set", "br0", "up")

    def plug(self, netns: str, ip: str) -> None:
        self.ports += 1
        port = f"p{self.ports}"
        sh("ip", "-n", self.netns, "link", "add", port, "type", "veth",
           "peer", "name", "ens4", "netns", netns)
        sh("ip", "-n", self.netns, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", netns, "addr", "add", f"{ip}/{self.prefixlen}", "dev", "ens4")
        sh("ip", "-n", netns, "link", "set", "ens4", "up")
        sh("ip", "-n", netns, "link", "set", "lo", "up")

    def destroy(self) -> None:
        sh("ip", "netns", "del", self.netns, check=False)


@dataclass
class Machine:
    """A started machine: its network namespace, its PID 1 (host pid and start time)."""

    name: str
    netns: str
    ip: str
    dir: Path
    launcher: subprocess.Popen | None = None
    pid1: int = 0
    pid1_start: int | None = None
    net_inode: int | None = None  # of its network and PID namespaces (leak checks)
    pid_inode: int | None = None
    # When stop() ended, in /proc/PID/stat start-time ticks: a process started later in a
    # namespace with one of these inodes is another run's (the kernel reuses them).
    stopped_tick: int | None = None
    keep: tuple[str, ...] = field(default_factory=lambda: host_paths())

    def start(self, switch: Switch, hostname: str, steps: list, daemon: list[str] | None,
              timeout: float = 60) -> None:
        """Boot: ``steps`` run after /run is a tmpfs holding this machine's directory at
        ``/run/machine`` and before /tmp and /dev/shm become the machine's own (so
        sources under the host's /tmp are still visible to them)."""
        sh("ip", "netns", "add", self.netns)
        self.net_inode = ns_inode(f"/run/netns/{self.netns}")
        switch.plug(self.netns, self.ip)
        ready = self.dir / "ready"
        # This checkout, its venv and Python stay visible where they are, even under /tmp
        # (a CI clone): parked under /run before /tmp becomes private, put back after.
        keep = [p for p in self.keep if Path(p).is_relative_to("/tmp")]
        park = [f"/run/keep/{i}" for i in range(len(keep))]
        steps = [["tmpfs", "/run", "mode=755"], ["mkdir", MACHINE_DIR, "755"],
                 ["bind", str(self.dir), MACHINE_DIR, False], *steps,
                 *(s for src, at in zip(keep, park) for s in (["mkdir", at, "755"],
                                                              ["bind", src, at, False])),
                 ["tmpfs", "/dev/shm", "mode=1777"], ["tmpfs", "/tmp", "mode=1777"],
                 *(s for src, at in zip(keep, park) for s in (["mkdir", src, "755"],
                                                              ["bind", at, src, False]))]
        spec = {"hostname": hostname, "steps": steps, "daemon": daemon,
                "daemon_log": f"{MACHINE_DIR}/sshd.log", "ready": f"{MACHINE_DIR}/ready"}
        (self.dir / "init.json").write_text(json.dumps(spec, indent=1))
        with open(self.dir / "init.log", "ab") as log:
            self.launcher = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, "unshare", "--pid", "--mount", "--uts",
                 "--fork", "--mount-proc", "--propagation", "private",
                 sys.executable, "-I", str(VM_INIT), str(self.dir / "init.json")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.launcher.poll() is not None or time.monotonic() > deadline:
                log_text = (self.dir / "init.log").read_text()[-3000:]
                self.stop()
                raise RuntimeError(f"machine {self.name} did not come up:\n{log_text}")
            time.sleep(0.05)
        [self.pid1] = children(self.launcher.pid)
        self.pid1_start = start_time(self.pid1)
        self.pid_inode = ns_inode(f"/proc/{self.pid1}/ns/pid")

    def nsenter(self) -> list[str]:
        """argv prefix running a command inside the machine (all its namespaces)."""
        return ["nsenter", f"--target={self.pid1}", "--net", "--mount", "--uts", "--pid",
                f"--wd={os.getcwd()}"]

    def stop(self) -> None:
        if self.pid1 and start_time(self.pid1) == self.pid1_start:
            try:
                os.kill(self.pid1, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.launcher is not None:
            try:
                self.launcher.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.launcher.pid, signal.SIGKILL)
                self.launcher.wait(30)
        sh("ip", "netns", "del", self.netns, check=False)
        if self.stopped_tick is None:  # stop_all runs twice; the first stop is the bound
            self.stopped_tick = clock_ticks_now()


@dataclass
class LoginUser:
    name: str
    uid: int
    keys: list[str] = field(default_factory=list)


def metadata_users(instance: dict, uid: int) -> list[LoginUser]:
    """Users and keys as GCE's guest agent takes them from instance metadata."""
    items = {i["key"]: i.get("value", "") for i in instance.get("metadata", {}).get("items", [])}
    if str(items.get("enable-oslogin", "")).upper() == "TRUE":
        return []  # OS Login: metadata keys are ignored
    users: dict[str, LoginUser] = {}
    for line in items.get("ssh-keys", "").splitlines():
        user, sep, key = line.strip().partition(":")
        if sep and user and key.strip():
            if user not in users:
                users[user] = LoginUser(user, uid + len(users))
            users[user].keys.append(key.strip())
    return list(users.values())


class Fleet:
    """The machines of one run. ``run_id`` prefixes every namespace name."""

    def __init__(self, run_id: str, run_dir: Path, prefixlen: int, *, uv_cache: Path,
                 wheelhouse: Path, uid: int, session_env: dict[str, str], zone_domain: str):
        self.run_id, self.dir = run_id, run_dir
        self.switch = Switch(f"{run_id}-switch", prefixlen)
        self.uv_cache, self.wheelhouse, self.uid = uv_cache, wheelhouse, uid
        self.session_env, self.zone_domain = session_env, zone_domain
        self.machines: dict[str, Machine] = {}
        self.history: list[Machine] = []  # every machine ever started (leak checks)
        self.netns_names: list[str] = [self.switch.netns]
        self._locks: dict[str, threading.Lock] = {}
        self._gone: set[str] = set()
        self._guard = threading.Lock()
        self.boot_errors: list[str] = []
        self.account_names: set[str] = set()  # every login user a machine got (leak checks)

    def create(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.switch.create()

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def _machine(self, name: str, ip: str) -> Machine:
        mdir = self.dir / "machines" / name
        mdir.mkdir(parents=True)
        m = Machine(name=name, netns=f"{self.run_id}-{name}", ip=ip, dir=mdir)
        with self._guard:
            self.netns_names.append(m.netns)
            self.history.append(m)
        return m

    def start_provider(self, name: str, ip: str, bundle: Path, home: Path) -> Machine:
        """The provider VM: private /tmp, the bundle at /opt/ray-gcp/src (as its boot
        script unpacks it) and the operator's ``home`` at /home/operator."""
        m = self._machine(name, ip)
        # ssh expands the `~` of `-i ~/.ray-gcp/ray-launcher-key` with the account's
        # home, not $HOME: the operator (root here, for this host's venv) lives there.
        passwd = []
        for line in Path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if len(fields) == 7 and fields[2] == "0":
                fields[5] = OPERATOR_HOME
            passwd.append(":".join(fields))
        (m.dir / "passwd").write_text("\n".join(passwd) + "\n")
        (m.dir / "resolv.conf").write_text(NO_NAME_SERVER)
        steps = [["bind", str(m.dir / "passwd"), "/etc/passwd", True],
                 ["bind", str(m.dir / "resolv.conf"), "/etc/resolv.conf", True],
                 ["tmpfs", "/opt", "mode=755"], ["mkdir", "/opt/ray-gcp/src", "755"],
                 ["bind", str(bundle), "/opt/ray-gcp/src", True],
                 ["tmpfs", "/home", "mode=755"], ["mkdir", OPERATOR_HOME, "700"],
                 ["bind", str(home), OPERATOR_HOME, False]]
        m.start(self.switch, name, steps, None)
        self.machines[name] = m
        return m

    # ---- instances -> machines (the fake API's hooks) --------------------------

    def boot(self, instance: dict) -> None:
        name = instance["name"]
        with self._lock(name):
            if name in self._gone or name in self.machines:
                return
            try:
                m = self._machine(name, instance["networkInterfaces"][0]["networkIP"])
                self._boot(m, instance)
            except Exception as e:  # noqa: BLE001 - reported by the test, as a VM that never booted
                self.boot_errors.append(f"{name}: {type(e).__name__}: {e}")
                return
            self.machines[name] = m

    def kill(self, instance: dict) -> None:
        name = instance["name"]
        with self._lock(name):
            self._gone.add(name)
            m = self.machines.pop(name, None)
            if m is not None:
                m.stop()
                # The boot disk goes with the instance (autoDelete), as on GCE.
                if all(d.get("autoDelete") for d in instance.get("disks") or [{}]):
                    shutil.rmtree(m.dir / "disk", ignore_errors=True)

    def _boot(self, m: Machine, instance: dict) -> None:
        users = metadata_users(instance, self.uid)
        self.account_names |= {u.name for u in users}
        etc, disk = m.dir / "etc", m.dir / "disk"
        etc.mkdir()
        disk.mkdir(mode=0o755)
        hostname = instance["name"]
        fqdn = f"{hostname}.{self.zone_domain}"
        (etc / "hostname").write_text(hostname + "\n")
        (etc / "hosts").write_text(
            f"127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
            f"{m.ip} {fqdn} {hostname}  # Added by Google\n")
        (etc / "resolv.conf").write_text(NO_NAME_SERVER)
        passwd = Path("/etc/passwd").read_text().rstrip("\n").splitlines()
        group = Path("/etc/group").read_text().rstrip("\n").splitlines()
        sudo_gid = self.uid + 500
        shadow = ["root:*:20000:0:99999:7:::"]
        for u in users:
            passwd.append(f"{u.name}:x:{u.uid}:{u.uid}::/home/{u.name}:/bin/bash")
            group.append(f"{u.name}:x:{u.uid}:")
            shadow.append(f"{u.name}:*:20000:0:99999:7:::")  # '*': no password, not locked
            home = disk / u.name
            # As the guest agent's `useradd -m`: the image's /etc/skel (Debian's .bashrc,
            # which returns early in non-interactive shells, and .profile).
            shutil.copytree("/etc/skel", home, symlinks=True)
            for path in [home, *home.rglob("*")]:
                os.lchown(path, u.uid, u.uid)
            (home / ".ssh").mkdir(parents=True)
            (home / ".ssh" / "authorized_keys").write_text("\n".join(u.keys) + "\n")
            (home / ".cache" / "uv").mkdir(parents=True)
            for d in (home, home / ".ssh", home / ".cache", home / ".cache" / "uv"):
                os.chown(d, u.uid, u.uid)
            os.chown(home / ".ssh" / "authorized_keys", u.uid, u.uid)
            (home / ".ssh").chmod(0o700)
            (home / ".ssh" / "authorized_keys").chmod(0o600)
        group.append(f"google-sudoers:x:{sudo_gid}:{','.join(u.name for u in users)}")
        (etc / "passwd").write_text("\n".join(passwd) + "\n")
        (etc / "group").write_text("\n".join(group) + "\n")
        (etc / "shadow").write_text("\n".join(shadow) + "\n")
        (etc / "shadow").chmod(0o640)
        sudoers = etc / "sudoers.d"
        sudoers.mkdir(mode=0o755)
        (sudoers / "google_sudoers").write_text("%google-sudoers ALL=(ALL:ALL) NOPASSWD:ALL\n")
        (sudoers / "google_sudoers").chmod(0o440)
        ssh = m.dir / "ssh"
        ssh.mkdir(mode=0o700)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "host_key"))
        inside = f"{MACHINE_DIR}/ssh"
        env = " ".join(f"{k}={v}" for k, v in sorted(self.session_env.items()))
        (ssh / "sshd_config").write_text(
            f"ListenAddress {m.ip}:22\nHostKey {inside}/host_key\nPidFile /run/sshd.pid\n"
            "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin no\nPubkeyAuthentication yes\n"
            "AuthorizedKeysFile .ssh/authorized_keys\nStrictModes yes\nPrintMotd no\n"
            "X11Forwarding no\nMaxStartups 100\nMaxSessions 100\nLogLevel VERBOSE\n"
            f"SetEnv {env}\nSubsystem sftp /usr/lib/openssh/sftp-server\n")
        steps: list = [
            ["mkdir", "/run/sshd", "755"],
            ["mkdir", WHEELS_IN_VM, "755"], ["bind", str(self.wheelhouse), WHEELS_IN_VM, True],
        ]
        for f in ("passwd", "group", "shadow", "hosts", "hostname", "resolv.conf", "sudoers.d"):
            steps.append(["bind", str(etc / f), f"/etc/{f}", True])
        steps.append(["bind", str(disk), "/home", False])
        for u in users[:1]:  # the prewarmed cache belongs to the first login user's uid
            upper, work = m.dir / "uv-upper", m.dir / "uv-work"
            upper.mkdir()
            work.mkdir()
            os.chown(upper, u.uid, u.uid)
            steps.append(["overlay", str(self.uv_cache), str(upper), str(work),
                          f"/home/{u.name}/.cache/uv"])
        m.start(self.switch, hostname, steps,
                ["/usr/sbin/sshd", "-D", "-e", "-f", f"{inside}/sshd_config"])

    def stop_all(self) -> None:
        for name in list(self.machines):
            with self._lock(name):
                self._gone.add(name)
                m = self.machines.pop(name, None)
                if m is not None:
                    m.stop()
        self.switch.destroy()
