"""The lab leaves nothing behind: namespaces, processes, veths, nft rules."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from services.natlab import Lab, LabBusy, NatMismatch, sweep
from services.natlab import lab as lab_module
from services.natlab.faults import RUN_DIR
from services.natlab.rules import router_ruleset
from tests.conftest import scaled
from tests.lab.conftest import needs_lab

pytestmark = needs_lab

SITES = ["port-restricted", "open"]


def lab_namespaces() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in listed.stdout.splitlines() if line.startswith("pcl-")]


def host_view() -> tuple[str, str]:
    """The host's own links and nft ruleset, which the lab must never touch."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    rules = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True)
    return links.stdout, rules.stdout


@pytest.fixture(autouse=True)
def clean_machine() -> Iterator[tuple[str, str]]:
    assert lab_namespaces() == []
    before = host_view()
    yield before
    assert lab_namespaces() == []
    assert host_view() == before
    assert not RUN_DIR.exists()


def assert_gone(*processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        assert process.wait(timeout=scaled(2)) is not None


def test_down_kills_processes_and_deletes_namespaces() -> None:
    lab = Lab(SITES, verify=False).up()
    assert set(lab_namespaces()) == {
        "pcl-inet", "pcl-server", "pcl-open", "pcl-open-wire", "pcl-port-restricted",
        "pcl-port-restricted-nat", "pcl-port-restricted-wire",
    }
    ours = lab.popen("port-restricted", ["sleep", "1000"])
    # Started behind the lab's back, as `python -m services.natlab exec` does.
    theirs = subprocess.Popen(["ip", "netns", "exec", "pcl-open", "sleep", "1000"])
    lab.down()
    assert lab.down_seconds is not None and lab.down_seconds < scaled(2)
    assert_gone(ours, theirs)
    assert ours.returncode == theirs.returncode == -9
    lab.down()  # twice is harmless


def test_down_after_an_exception_in_the_with_block() -> None:
    sleeper: subprocess.Popen[bytes] | None = None
    with pytest.raises(RuntimeError, match="test failed"), Lab(SITES, verify=False) as lab:
        sleeper = lab.popen("open", ["sleep", "1000"])
        raise RuntimeError("test failed")
    assert sleeper is not None
    assert_gone(sleeper)


def test_one_lab_at_a_time() -> None:
    with Lab(["open"], verify=False) as first:
        with pytest.raises(LabBusy):
            Lab(["symmetric"], verify=False).up()
        with pytest.raises(LabBusy):
            sweep()
        assert "pcl-open" in lab_namespaces()
        assert first.run("open", ["true"]).returncode == 0


def test_up_sweeps_leftovers_of_a_dead_lab() -> None:
    subprocess.run(["ip", "netns", "add", "pcl-leftover"], check=True)
    orphan = subprocess.Popen(["ip", "netns", "exec", "pcl-leftover", "sleep", "1000"])
    with Lab(["open"], verify=False):
        assert "pcl-leftover" not in lab_namespaces()
        assert_gone(orphan)


def test_a_nat_that_misbehaves_fails_up_and_is_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full cone without its inbound DNAT filters like a port-restricted NAT."""

    def broken(site: object, timeout: int | None = None) -> str:
        text = router_ruleset(site, timeout)  # type: ignore[arg-type]
        return "\n".join(line for line in text.splitlines() if "dnat" not in line) + "\n"

    monkeypatch.setattr(lab_module, "router_ruleset", broken)
    with pytest.raises(NatMismatch, match="full-cone: expected mapping/filtering"):
        Lab(["full-cone"]).up()


def test_down_ends_faults_impairments_and_the_roaming_host() -> None:
    """A lab taken down mid-fault: forwarder, timer, roaming host and sockets all go."""
    lab = Lab(SITES, verify=False).up()
    impaired = lab.impair("port-restricted", delay=0.05, loss=0.1)
    fault = lab.link_down("open", seconds=30, where="wan")
    lab.roam("port-restricted")
    assert "pcl-roam" in lab_namespaces()
    assert any(RUN_DIR.iterdir())  # the forwarder's control socket
    lab.down()
    assert_gone(impaired.process)
    assert fault.up_at is None  # cancelled, not restored into a deleted namespace
    impaired.clear()  # harmless once the lab is down


def test_cli_impairment_outlives_the_command_and_goes_with_down() -> None:
    """`impair` from another shell starts a forwarder that `down` removes."""
    from services.natlab.__main__ import main

    with Lab(["symmetric"], verify=False):
        assert main(["impair", "symmetric", "--delay", "20ms", "--loss", "1%"]) == 0
        forwarders = subprocess.run(
            ["ip", "netns", "pids", "pcl-symmetric-wire"], capture_output=True, text=True,
            check=True,
        ).stdout.split()
        assert len(forwarders) == 1
        assert main(["impair", "symmetric", "--rate", "600kbit", "--direction", "up"]) == 0
        assert main(["impair", "symmetric", "--loss", "200%"]) == 2  # refused, still serving
        assert main(["impair", "symmetric", "--clear"]) == 0
        assert main(["impair", "symmetric", "--jitter", "5ms", "--delay", "10ms"]) == 0
    # The lab went down with the forwarder still running.
