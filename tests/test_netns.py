"""The packet-level network (harness/deployment/netns.py): rules cut and heal packets, and
nothing of it is left after a pass, a failure or a SIGKILL of the runner.

Needs root (network namespaces); without it every test here skips with the reason.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from celery_chaos.checks.liveness import is_network_fault
from celery_chaos.deployment.netns import SUBNET, Cut, Topology, netns_unavailable
from celery_chaos.deployment.processes import ManagedProcess, wait_for
from celery_chaos.errors import InfrastructureError
from celery_chaos.faults.context import Window
from celery_chaos.faults.schedule import close_window, open_window
from celery_chaos.faults.vocabulary import parse_op
from celery_chaos.history.schema import Kind
from celery_chaos.history.store import HistoryWriter, read_history
from celery_chaos.spec.model import DeploymentSpec

needs_netns = pytest.mark.skipif(bool(netns_unavailable()), reason=str(netns_unavailable()))


def _reach(topo: Topology, node: str, port: int) -> bool:
    """Whether ``node`` opens a TCP connection to the hub's ``port`` within 1 s."""
    res = subprocess.run(
        [*topo.prefix(node), "socat", "-T1", "-", f"TCP:{SUBNET}.1:{port},connect-timeout=1"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=10,
    )
    return res.returncode == 0 and "hi" in res.stdout


def _net_namespaces() -> set[str]:
    """Every network namespace a process on this machine is in (``net:[inode]``)."""
    out = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                out.add(os.readlink(f"/proc/{pid}/ns/net"))
            except OSError:
                pass
    return out


def _root_state() -> tuple[str, str, str]:
    """What the harness must never leave in the root namespace: named namespaces, veths and
    rules naming its subnet."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    veths = subprocess.run(["ip", "-o", "link", "show", "type", "veth"],
                           capture_output=True, text=True).stdout
    rules = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True).stdout
    return netns, " ".join(ln for ln in veths.splitlines() if ": v-" in ln), \
        " ".join(ln for ln in rules.splitlines() if SUBNET in ln)


@needs_netns
def test_cut_heal_and_one_way(tmp_path: Path) -> None:
    topo = Topology(tmp_path, {"broker": {"net.ipv4.tcp_retries2": 4}}).start()
    try:
        server = ManagedProcess(
            "echo", [*topo.prefix("broker"), "socat", "TCP-LISTEN:7000,fork,reuseaddr",
                     "SYSTEM:echo hi"], tmp_path,
        ).start()
        assert topo.address("w1") == f"{SUBNET}.2" and topo.address("w2") == f"{SUBNET}.3"
        assert wait_for(lambda: _reach(topo, "w1", 7000), 5)
        assert topo.run("broker", "cat", "/proc/sys/net/ipv4/tcp_retries2").strip() == "4"
        assert topo.run("w1", "cat", "/proc/sys/net/ipv4/tcp_retries2").strip() == "15"

        cut = topo.cut(["w1"], ["broker"], outbound=True, inbound=True)
        assert sorted(topo.rules("w1")) == [f"-A INPUT -s {SUBNET}.1/32 -j DROP",
                                            f"-A OUTPUT -d {SUBNET}.1/32 -j DROP"]
        assert not _reach(topo, "w1", 7000)
        assert _reach(topo, "w2", 7000)  # only the nodes named are cut
        topo.heal(cut)
        assert topo.rules("w1") == []
        assert _reach(topo, "w1", 7000)

        one_way = topo.cut(["w1"], ["broker"], outbound=True, inbound=False)
        assert topo.rules("w1") == [f"-A OUTPUT -d {SUBNET}.1/32 -j DROP"]
        topo.heal(one_way)
        loss = topo.cut(["w2"], ["broker"], outbound=True, inbound=True, loss=0.25)
        assert all("--probability 0.25" in r for r in topo.rules("w2"))
        topo.heal(loss)

        # the harness's own path to the hub: a relay on loopback, which cuts never touch
        port = topo.expose("broker", 7000)
        topo.cut(["w1", "w2"], ["broker"], outbound=True, inbound=True)
        out = subprocess.run(["socat", "-T1", "-", f"TCP:127.0.0.1:{port}"],
                             capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert "hi" in out.stdout
        server.stop(2)
    finally:
        topo.close()


class _Packets:
    """The part of a deployment that packet faults use."""

    def __init__(self, topo: Topology, writer: HistoryWriter) -> None:
        self.topo, self.writer = topo, writer

    def packet_nodes(self, patterns: str | list[str]) -> list[str]:
        return self.topo.select(patterns)

    def cut_packets(self, nodes: list[str], peers: list[str], *, outbound: bool, inbound: bool,
                    loss: float | None = None) -> Cut:
        return self.topo.cut(nodes, peers, outbound=outbound, inbound=inbound, loss=loss)

    def heal_packets(self, cut: Cut) -> None:
        self.topo.heal(cut)


@needs_netns
def test_packet_ops_record_their_windows(tmp_path: Path) -> None:
    topo = Topology(tmp_path).start()
    try:
        topo.node("w1")
        topo.node("publisher")
        dep = _Packets(topo, HistoryWriter(tmp_path / "history", "harness", "harness"))
        one_way = parse_op({"op": "packet_partition", "nodes": "publisher",
                            "direction": "outbound"})
        win = Window(step="cut", seq=1)
        open_window(dep, one_way, win)  # type: ignore[arg-type]
        assert topo.rules("publisher") == [f"-A OUTPUT -d {SUBNET}.1/32 -j DROP"]
        assert topo.rules("w1") == []
        close_window(dep, one_way, win)  # type: ignore[arg-type]
        assert topo.rules("publisher") == []
        loss = parse_op({"op": "packet_loss", "percent": 30})
        win2 = Window(step="loss", seq=2)
        open_window(dep, loss, win2)  # type: ignore[arg-type]
        rules = topo.rules("w1")
        probabilities = [float(r.split("--probability ")[1].split()[0]) for r in rules]
        assert probabilities == [pytest.approx(0.3, abs=1e-6)] * 2, rules
        close_window(dep, loss, win2)  # type: ignore[arg-type]
        assert topo.rules("w1") == []
    finally:
        topo.close()
    records = [r for r in read_history(tmp_path / "history") if r.kind is Kind.FAULT]
    assert [(r.name, r.phase) for r in records] == [
        ("packet_partition_outbound", "start"), ("packet_partition_outbound", "end"),
        ("packet_loss", "start"), ("packet_loss", "end"),
    ]
    assert records[0].detail["links"] == ["publisher-broker"]
    assert records[2].detail["links"] == ["w1-broker"]  # w* by default
    assert records[2].detail["loss_percent"] == 30
    assert all(is_network_fault(r) for r in records)  # heals that resume checks judge


@needs_netns
def test_bad_node_and_rule_are_one_line(tmp_path: Path) -> None:
    topo = Topology(tmp_path).start()
    try:
        topo.node("w1")
        with pytest.raises(InfrastructureError, match="no node matches w9: nodes are broker, w1"):
            topo.select("w9")
        with pytest.raises(InfrastructureError) as err:
            topo.run("w1", "iptables", "-w", "-A", "NOCHAIN", "-j", "DROP")
        assert "\n" not in str(err.value)
    finally:
        topo.close()


def test_spec_rules() -> None:
    """Deployment fields that need each other are refused together, in one line."""
    with pytest.raises(ValueError, match="exclude each other"):
        DeploymentSpec(network="netns", proxied=True)
    with pytest.raises(ValueError, match="only net"):
        DeploymentSpec(network="netns", sysctls={"broker": {"kernel.pid_max": 1}})
    with pytest.raises(ValueError, match="sysctls need network: netns"):
        DeploymentSpec(sysctls={"broker": {"net.ipv4.tcp_retries2": 4}})
    with pytest.raises(ValueError, match="broker_config needs broker: rabbitmq and a broker_gr"):
        DeploymentSpec(broker_config={"consumer_timeout": "3000"})  # the shared node
    DeploymentSpec(broker_group="ct", broker_config={"consumer_timeout": "3000"})


RUNNER = textwrap.dedent('''
    import os, signal, sys, threading, time
    from pathlib import Path
    from celery_chaos.deployment.processes import ManagedProcess
    from celery_chaos.spec.model import DeploymentSpec

    SPEC = DeploymentSpec(broker="redis", network="netns", workers=1)

    def record(chaos):
        net = chaos.backend.net
        inodes = [os.readlink(f"/proc/{ns.pid}/ns/net") for ns in net.nodes.values()]
        Path(os.environ["NETNS_OUT"]).write_text("\\n".join(inodes))
        chaos.cut_packets(["w1"], ["broker"], outbound=True, inbound=True)

    def test_pass(chaos):
        chaos.deploy_spec(SPEC)
        record(chaos)

    def test_failure(chaos):
        chaos.deploy_spec(SPEC)
        record(chaos)
        raise RuntimeError("a scenario that fails")

    def test_killed(chaos):
        chaos.deploy_spec(SPEC)
        # a process in a namespace started from another thread: no PDEATHSIG covers it
        t = threading.Thread(target=lambda: ManagedProcess(
            "stray", [*chaos.backend.net.prefix("x"), "sleep", "600"], chaos.dir).start())
        t.start(); t.join()
        record(chaos)
        Path(os.environ["NETNS_OUT"] + ".ready").write_text("ready")
        time.sleep(600)
''')


@needs_netns
@pytest.mark.parametrize("case", ["pass", "failure", "killed"])
def test_nothing_left_behind(tmp_path: Path, case: str) -> None:
    """After a pass, a failure and a SIGKILL of the runner: none of the run's namespaces,
    veths or rules is left (and none ever touched the root namespace)."""
    (tmp_path / "test_runner.py").write_text(RUNNER)
    out = tmp_path / "netns.txt"
    env = {**os.environ, "NETNS_OUT": str(out)}
    before = _root_state()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
           str(tmp_path / "test_runner.py"), "-k", f"test_{case}",
           "--chaos-reports", str(tmp_path / "reports")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    if case == "killed":
        ready = Path(str(out) + ".ready")
        if not wait_for(ready.exists, 90, interval=0.2):
            proc.kill()
            pytest.fail(f"runner never got ready: {proc.communicate()[0].decode()[-2000:]}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    else:
        output = proc.communicate(timeout=120)[0].decode()
        assert proc.returncode == (0 if case == "pass" else 1), output[-2000:]
    inodes = set(out.read_text().split())
    assert len(inodes) == (3 if case == "killed" else 2)  # the hub, w1 (and x)
    gone = wait_for(lambda: not inodes & _net_namespaces(), 15, interval=0.2)
    assert gone, f"namespaces left: {sorted(inodes & _net_namespaces())}"
    assert _root_state() == before


def test_why_unavailable_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a machine without the tools, or a user without root, is told (the skip reason of
    every packet scenario)."""
    import celery_chaos.deployment.netns as netns

    monkeypatch.setattr(netns, "_tool", lambda name: name if name == "iptables" else "/x")
    assert netns.netns_unavailable() == (
        "packet-level faults need iptables (iptables): run `bash scripts/setup.sh` as root, "
        "which installs them"
    )
    monkeypatch.setattr(netns, "_tool", lambda name: "/x/" + name)
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(netns.Path, "read_text", lambda self: "CapEff:\t0000000000000000\n")
    reason = netns.netns_unavailable()
    assert reason is not None and "need root" in reason and "\n" not in reason
