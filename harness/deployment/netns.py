"""A packet-level network for one deployment: private network namespaces joined by a bridge.

Each node (the broker, each worker, the publisher) gets a network namespace of its own. The
broker's namespace (the *hub*) holds a bridge ``br0`` with the hub's address; every other
namespace is joined to it by a veth pair (``eth0`` inside the node, ``v-<node>`` on the
bridge). Addresses are ``10.213.0.0/24``, the hub at ``.1``: they exist only inside these
namespaces, and nothing is routed out of them. The root namespace gets no interface, no
address and no rule.

Packet faults are iptables rules (``DROP``, or ``DROP`` with the ``statistic`` match for a
loss rate) in the namespaces of the cut side's nodes: traffic is lost packet by packet while
both ends keep their TCP connections, which is what a proxy cannot do (docs/network.md).

The harness itself reaches the hub through a relay that never crosses the fault path: a
``socat`` in the root namespace on ``127.0.0.1`` forwards to a Unix socket, and a ``socat``
in the hub forwards that to the broker's port on the hub's loopback.

Namespaces are unnamed: each is held by a small holder process (``unshare --net``). A
namespace ends with its last process, taking its veth ends and rules with it, so a run
that is SIGKILLed leaves nothing: each holder watches the harness's pid and, once it is
gone, kills whatever still runs in its namespace and exits.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from celery_chaos.deployment.processes import ManagedProcess, free_port, wait_for
from celery_chaos.errors import InfrastructureError

__all__ = ["HUB", "Cut", "Namespace", "Topology", "netns_unavailable"]

#: The node name of the hub namespace (the broker's, holding the bridge).
HUB = "broker"
SUBNET = "10.213.0"
#: The binaries a packet-level network needs (Debian: iproute2, util-linux, iptables, socat).
TOOLS = {"ip": "iproute2", "unshare": "util-linux", "nsenter": "util-linux",
         "iptables": "iptables", "socat": "socat"}

_HOLDER = r"""
"$2" link set lo up
trap 'exit 0' TERM
me=$(readlink /proc/$$/ns/net)
while kill -0 "$1" 2>/dev/null; do sleep 0.5 & wait $!; done
for p in /proc/[0-9]*; do
  pid=${p#/proc/}
  [ "$pid" = "$$" ] && continue
  [ "$(readlink "$p/ns/net" 2>/dev/null)" = "$me" ] && kill -9 "$pid" 2>/dev/null
done
exit 0
"""


def _tool(name: str) -> str:
    """A tool's path (``/usr/sbin`` counts, even when not on ``PATH``); the name if absent."""
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") or name


def netns_unavailable() -> str | None:
    """Why this machine cannot build a packet-level network (one line), or None."""
    missing = [f"{tool} ({pkg})" for tool, pkg in TOOLS.items() if _tool(tool) == tool]
    if missing:
        return (f"packet-level faults need {', '.join(missing)}: run `bash scripts/setup.sh` "
                "as root, which installs them")
    if os.geteuid() != 0:
        try:
            caps = int(next(ln.split()[1] for ln in Path("/proc/self/status").read_text()
                            .splitlines() if ln.startswith("CapEff:")), 16)
        except (OSError, StopIteration, ValueError):
            caps = 0
        if not caps & (1 << 12) or not caps & (1 << 21):  # CAP_NET_ADMIN, CAP_SYS_ADMIN
            return ("packet-level faults need root (CAP_NET_ADMIN and CAP_SYS_ADMIN to make "
                    "network namespaces): run as root")
    return None


@dataclass
class Namespace:
    """One node's network namespace, held by ``holder``."""

    node: str
    address: str
    holder: ManagedProcess

    @property
    def pid(self) -> int:
        assert self.holder.pid is not None
        return self.holder.pid

    def prefix(self) -> list[str]:
        """A command prefix that runs a command in this namespace (same pid: nsenter execs)."""
        return [_tool("nsenter"), f"--net=/proc/{self.pid}/ns/net", "--"]


@dataclass
class Cut:
    """iptables rules of one packet fault, per namespace, to delete on heal."""

    rules: list[tuple[str, list[str]]] = field(default_factory=list)  # (node, rule spec)


class Topology:
    """The namespaces, veths, relays and packet rules of one deployment."""

    def __init__(self, run_dir: Path, sysctls: dict[str, dict[str, int]] | None = None) -> None:
        """``sysctls``: ``net.*`` values per node glob, set in each matching namespace."""
        self.dir = run_dir
        self.sysctls = dict(sysctls or {})
        self.nodes: dict[str, Namespace] = {}
        self._relays: list[ManagedProcess] = []
        self._sockets = Path(tempfile.mkdtemp(prefix="chaos-netns-"))  # short: sun_path
        self._next = 1

    # -- building ----------------------------------------------------------------------------

    def start(self) -> Topology:
        """Create the hub (the broker's namespace, with the bridge)."""
        reason = netns_unavailable()
        if reason:
            raise InfrastructureError(reason)
        try:
            hub = self._namespace(HUB)
            self.run(HUB, "ip", "link", "add", "br0", "type", "bridge")
            self.run(HUB, "ip", "addr", "add", f"{hub.address}/24", "dev", "br0")
            self.run(HUB, "ip", "link", "set", "br0", "up")
        except InfrastructureError:
            self.close()
            raise
        return self

    def _namespace(self, node: str) -> Namespace:
        address = f"{SUBNET}.{self._next}"
        self._next += 1
        holder = ManagedProcess(
            f"netns-{node}",
            [_tool("unshare"), "--net", "--", "sh", "-c", _HOLDER, "holder", str(os.getpid()),
             _tool("ip")],
            self.dir,
        )
        holder.start()
        ns = Namespace(node, address, holder)
        self.nodes[node] = ns
        if not wait_for(lambda: self._entered(ns), 5, interval=0.02):
            raise InfrastructureError(f"network namespace of {node} did not come up")
        self.run(node, "ip", "link", "set", "lo", "up")  # the holder does too; do not race it
        for pattern, values in self.sysctls.items():
            if fnmatch.fnmatchcase(node, pattern):
                for key, value in values.items():  # /proc/sys/net is the opener's namespace's
                    path = "/proc/sys/" + key.replace(".", "/")
                    self.run(node, "sh", "-c", f'echo {int(value)} > "{path}"')
        return ns

    @staticmethod
    def _entered(ns: Namespace) -> bool:
        try:
            return os.readlink(f"/proc/{ns.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        except OSError:
            return False

    def node(self, node: str) -> Namespace:
        """A node's namespace, created (and joined to the hub) on first use."""
        if node in self.nodes:
            return self.nodes[node]
        ns = self._namespace(node)
        port = f"v-{node}"[:15]
        _run([_tool("ip"), "link", "add", port, "netns", str(self.nodes[HUB].pid), "type", "veth",
              "peer", "name", "eth0", "netns", str(ns.pid)])
        self.run(HUB, "ip", "link", "set", port, "master", "br0")
        self.run(HUB, "ip", "link", "set", port, "up")
        self.run(node, "ip", "addr", "add", f"{ns.address}/24", "dev", "eth0")
        self.run(node, "ip", "link", "set", "eth0", "up")
        return ns

    def prefix(self, node: str) -> list[str]:
        """The command prefix that runs a process in ``node``'s namespace."""
        return self.node(node).prefix()

    def address(self, node: str) -> str:
        return self.node(node).address

    def run(self, node: str, *cmd: str) -> str:
        """Run ``cmd`` in ``node``'s namespace; a failure raises one line."""
        return _run([*self.nodes[node].prefix(), _tool(cmd[0]), *cmd[1:]])

    def expose(self, node: str, port: int) -> int:
        """A port on the root namespace's ``127.0.0.1`` relayed to ``port`` on ``node``'s
        loopback (the harness's own path to a broker: packet faults never touch it)."""
        sock = self._sockets / f"{node}-{port}.sock"
        inner = ManagedProcess(
            f"relay-{node}-{port}-in",
            [*self.prefix(node), _tool("socat"), f"UNIX-LISTEN:{sock},fork,unlink-early",
             f"TCP:127.0.0.1:{port}"],
            self.dir,
        )
        self._relays.append(inner.start())
        if not wait_for(sock.exists, 5, interval=0.02):
            raise InfrastructureError(f"relay to {node}:{port} did not start: see {self.dir}")
        outer_port = free_port()
        outer = ManagedProcess(
            f"relay-{node}-{port}-out",
            [_tool("socat"), f"TCP-LISTEN:{outer_port},bind=127.0.0.1,reuseaddr,fork",
             f"UNIX-CONNECT:{sock}"],
            self.dir,
        )
        self._relays.append(outer.start())
        if not wait_for(lambda: _listening(outer_port), 5, interval=0.02):
            raise InfrastructureError(f"relay to {node}:{port} did not start: see {self.dir}")
        return outer_port

    # -- packet faults -----------------------------------------------------------------------

    def select(self, patterns: str | list[str]) -> list[str]:
        """Node names matching globs (``w*``, ``publisher``, ``broker``); one line when none."""
        pats = [patterns] if isinstance(patterns, str) else list(patterns)
        names = [n for n in self.nodes if any(fnmatch.fnmatchcase(n, p) for p in pats)]
        if not names:
            raise InfrastructureError(
                f"no node matches {', '.join(pats)}: nodes are {', '.join(self.nodes)}"
            )
        return names

    def cut(self, nodes: list[str], peers: list[str], *, outbound: bool, inbound: bool,
            loss: float | None = None) -> Cut:
        """Drop packets between ``nodes`` and ``peers``: ``outbound`` (node to peer: the
        nodes are not heard), ``inbound`` (peer to node: the nodes do not hear), or both.
        ``loss``: drop only that fraction of packets (0-1), at random, per packet."""
        cut = Cut()
        match = ["-m", "statistic", "--mode", "random", "--probability", f"{loss:.4f}"] \
            if loss is not None else []
        for node in nodes:
            for peer in peers:
                peer_addr = self.nodes[peer].address
                if outbound:
                    cut.rules.append((node, ["OUTPUT", "-d", peer_addr, *match, "-j", "DROP"]))
                if inbound:
                    cut.rules.append((node, ["INPUT", "-s", peer_addr, *match, "-j", "DROP"]))
        done: list[tuple[str, list[str]]] = []
        try:
            for node, rule in cut.rules:
                self.run(node, "iptables", "-w", "-I", *rule)
                done.append((node, rule))
        except InfrastructureError:
            self._delete(done)
            raise
        return cut

    def heal(self, cut: Cut) -> None:
        """Delete the rules of ``cut``."""
        self._delete(cut.rules)

    def _delete(self, rules: list[tuple[str, list[str]]]) -> None:
        errors = []
        for node, rule in rules:
            try:
                self.run(node, "iptables", "-w", "-D", *rule)
            except InfrastructureError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def rules(self, node: str) -> list[str]:
        """``iptables -S`` of a node's namespace (the rules in force)."""
        return [ln for ln in self.run(node, "iptables", "-w", "-S").splitlines()
                if ln.startswith("-A ")]

    # -- teardown ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the relays and the holders: the namespaces, veths and rules end with them
        (once the nodes' own processes have been stopped)."""
        for relay in self._relays:
            relay.stop(2)
        for ns in reversed(list(self.nodes.values())):
            ns.holder.stop(2)
        self._relays.clear()
        self.nodes.clear()
        shutil.rmtree(self._sockets, ignore_errors=True)


def _run(cmd: list[str]) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=20,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InfrastructureError(f"{' '.join(cmd[-6:])}: {exc}") from None
    if res.returncode != 0:
        last = (res.stderr or res.stdout).strip().splitlines()
        raise InfrastructureError(
            f"{' '.join(cmd[3:] if cmd[0].endswith('nsenter') else cmd)} failed: "
            f"{last[-1] if last else f'exit {res.returncode}'}"
        )
    return res.stdout


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
