"""What real nodes change on this machine outside their own folders, recorded before they start and
undone after they stop: iptables chains and rules (the kubelet's canaries and firewall, kube-proxy's
Services) in both families, the kernel settings the kubelet and kube-proxy write, the network
namespaces and veths containerd's CNI makes, and the nodes' bridges (their routes go with them).
`undo` returns what it could not remove; the tier fails on it."""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

TABLES = ("filter", "nat", "mangle", "raw")
FAMILIES = ("iptables", "ip6tables")
NETNS = Path("/run/netns")
# The kubelet sets the first six at start (protectKernelDefaults: false); kube-proxy the others.
SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
)

Rules = dict[str, tuple[frozenset[str], tuple[str, ...]]]  # "iptables nat" -> chains, rules


def _run(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=60).stdout


def _iptables() -> Rules:
    out: Rules = {}
    for family in FAMILIES:
        for table in TABLES:
            lines = _run(f"{family}-save", "-t", table).splitlines()
            chains = frozenset(line[1:].split()[0] for line in lines if line.startswith(":"))
            out[f"{family} {table}"] = (chains, tuple(line for line in lines if line.startswith("-A ")))
    return out


def _sysctls() -> dict[str, str]:
    out = {}
    for key in SYSCTLS:
        path = Path("/proc/sys") / key
        if path.exists():
            out[key] = path.read_text().strip()
    return out


def _netns() -> frozenset[str]:
    return frozenset(p.name for p in NETNS.iterdir()) if NETNS.is_dir() else frozenset()


def links(master: str | None = None) -> list[str]:
    """Names of this machine's network links (those enslaved to `master` when given)."""
    args = ["ip", "-o", "link", "show", *(["master", master] if master else [])]
    return [line.split(":")[1].strip().split("@")[0] for line in _run(*args).splitlines() if ":" in line]


@dataclass(frozen=True)
class Snapshot:
    rules: Rules
    sysctls: dict[str, str]
    netns: frozenset[str]

    @staticmethod
    def take() -> Snapshot:
        return Snapshot(_iptables(), _sysctls(), _netns())

    def undo(self, bridges: list[str]) -> list[str]:
        """Removes what appeared since the snapshot (containerd's netns and veths, the bridges, new
        iptables rules and chains) and restores the kernel settings; returns what is left."""
        for name in _netns() - self.netns:
            if name.startswith("cni-"):  # containerd's; another program's are not ours to remove
                subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        for bridge in bridges:
            for veth in links(bridge):
                subprocess.run(["ip", "link", "delete", veth], capture_output=True, check=False)
            if bridge in links():
                subprocess.run(["ip", "link", "delete", bridge], capture_output=True, check=False)
        for key, (chains, rules) in self._new_iptables().items():
            family, table = key.split()
            for rule in reversed(rules):
                subprocess.run([family, "-t", table, "-D", *shlex.split(rule)[1:]], capture_output=True, check=False)
            for flag in ("-F", "-X"):
                for chain in chains:
                    subprocess.run([family, "-t", table, flag, chain], capture_output=True, check=False)
        for key, value in self.sysctls.items():
            path = Path("/proc/sys") / key
            if path.read_text().strip() != value:
                path.write_text(value)
        return self.left(bridges)

    def _new_iptables(self) -> dict[str, tuple[list[str], list[str]]]:
        """The chains (sorted) and rules (in order) of each table that the snapshot did not have."""
        out = {}
        for key, (chains, rules) in _iptables().items():
            before_chains, before_rules = self.rules.get(key, (frozenset(), ()))
            out[key] = (sorted(chains - before_chains), [r for r in rules if r not in before_rules])
        return out

    def new_netns(self) -> list[str]:
        """containerd's network namespaces made since the snapshot."""
        return sorted(n for n in _netns() - self.netns if n.startswith("cni-"))

    def left(self, bridges: list[str]) -> list[str]:
        out = [f"netns {n}" for n in self.new_netns()]
        out += [f"link {b}" for b in bridges if b in links()]
        for key, (chains, rules) in self._new_iptables().items():
            out += [f"{key} chain {c}" for c in chains]
            out += [f"{key} rule {r}" for r in rules]
        out += [f"sysctl {k}={v} (was {self.sysctls[k]})" for k, v in _sysctls().items() if v != self.sysctls.get(k)]
        return out
