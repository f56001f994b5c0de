"""The leak check reads the host, and blames the run only for its own traces."""

from __future__ import annotations

import os
from pathlib import Path

from tests.e2e import leaks


def test_new_accounts_are_the_runs_only_if_they_carry_its_names_or_ids(monkeypatch, tmp_path):
    entries = {("/etc/passwd", "root", "0")}
    monkeypatch.setattr(leaks, "account_entries", lambda: set(entries))
    monkeypatch.setattr(leaks, "netns_names", lambda: set())
    before = leaks.HostSnapshot.capture()
    entries |= {("/etc/passwd", "haproxy", "103"), ("/etc/group", "google-sudoers", "4742"),
                ("/etc/passwd", "ray", "4242")}
    left = leaks.leftovers(before, "rg1x", tmp_path, set(), set(),
                           {"ray", "google-sudoers", "4242", "4742"}, wait=0)
    assert left == ["/etc/group has a new entry 'google-sudoers' (id 4742) of the run",
                    "/etc/passwd has a new entry 'ray' (id 4242) of the run"]


def test_namespaces_and_mounts_of_the_run_are_found(monkeypatch, tmp_path):
    monkeypatch.setattr(leaks, "account_entries", lambda: set())
    names = {"other-helper-ns"}
    monkeypatch.setattr(leaks, "netns_names", lambda: set(names))
    before = leaks.HostSnapshot.capture()
    names |= {"rg1x-switch", "rg2x-switch"}
    left = leaks.leftovers(before, "rg1x", tmp_path, set(), set(), wait=0)
    assert left == ["network namespace rg1x-switch survives"]


def test_a_process_in_a_recorded_namespace_is_found():
    here = leaks.ns_inode("/proc/self/ns/net")
    found = leaks._processes({here}, set(), "/nonexistent-run-dir")
    assert any(Path(f"/proc/{pid}").exists() for pid in found)


def test_a_process_started_after_its_machine_stopped_is_another_runs():
    """The kernel reuses a dead namespace's inode: another run's new machine may get one of
    ours. Its processes started after ours stopped; ours, before."""
    here = leaks.ns_inode("/proc/self/ns/net")
    me = os.getpid()
    started = int(Path(f"/proc/{me}/stat").read_text().rsplit(")", 1)[1].split()[19])
    assert me in leaks._processes({here: started}, {}, "/nonexistent-run-dir")
    assert me in leaks._processes({here: leaks.clock_ticks_now()}, {}, "/nonexistent-run-dir")
    assert me not in leaks._processes({here: started - 1}, {}, "/nonexistent-run-dir")
    assert me in leaks._processes({here: None}, {}, "/nonexistent-run-dir")
