"""A cluster's network built from real network namespaces, the way flannel and kube-proxy build it.

    vpc namespace: bridge br0 (the VPC subnet), one veth port per host, MTU 9001
    host namespaces (master, minion-N): eth0 10.240.0.1x on br0; flannel.1, a real VXLAN device
        (VNI 1, UDP 8472, no learning) with flanneld's per-peer route, neighbour and FDB entries
        (10.200.k.0/24 via 10.200.k.0 onlink, the peer VTEP's MAC, its underlay IP), MTU 8951
    minions also: bridge cni0 10.200.k.1/24 and one pod namespace behind it (eth0 10.200.k.5)
        running tests/netexec_echo.py on 8080; nftables DNAT of the Service ClusterIP to a random
        echo pod (kube-proxy's job), masquerade of hairpin traffic
    minion-0 also: a DNS pod (dnsmasq, 10.200.1.10) answering the Service's name with its ClusterIP

Names carry the process id and a counter, so parallel runs never meet; `cluster()` removes every
namespace, process and /etc/netns entry it made, whatever happens.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

UNDERLAY_MTU = 9001
POD_MTU = 8951
VXLAN_PORT = 8472
SERVICE_IP = "10.32.0.99"
SERVICE_NAME = "echo.kube-ec2-smoke.svc.cluster.local"
DNS_POD_IP = "10.200.1.10"
ECHO = Path(__file__).with_name("netexec_echo.py")
REAL_FRAMES = ("gso_max_segs", "1")
"""On the devices whose sockets send (pods' eth0, hosts' flannel.1): one segment per packet. veth
and bridges pass a GSO packet of any size (net/core/dev.c is_skb_forwardable), so without this a
frame larger than a link's MTU would not be dropped, as it is between EC2 instances."""
TOOLS = ("ip", "bridge", "nft", "dnsmasq", "curl", "timeout")
_counter = itertools.count()


@dataclass
class Host:
    name: str
    ns: str
    index: int
    """k: underlay 10.240.0.(10+k), pod subnet 10.200.k.0/24 (the master is 0)."""
    pod_ns: str | None = None

    @property
    def underlay_ip(self) -> str:
        return f"10.240.0.{10 + self.index}"

    @property
    def vtep_mac(self) -> str:
        return f"02:00:00:00:00:{self.index:02x}"

    @property
    def vtep_ip(self) -> str:
        return f"10.200.{self.index}.0"

    @property
    def pod_ip(self) -> str:
        return f"10.200.{self.index}.5"


@dataclass
class Cluster:
    prefix: str
    master: Host
    minions: list[Host]
    vpc: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    netns_dirs: list[Path] = field(default_factory=list)

    @property
    def hosts(self) -> list[Host]:
        return [self.master, *self.minions]

    @property
    def namespaces(self) -> list[str]:
        pods = [h.pod_ns for h in self.minions if h.pod_ns]
        return [self.vpc, *(h.ns for h in self.hosts), *pods, self.dns_ns]

    @property
    def dns_ns(self) -> str:
        return f"{self.prefix}-dns"

    def smoke_pods(self) -> list[str]:
        """SMOKE_PODS lines: pod (its namespace), IP, node."""
        return [f"{h.pod_ns} {h.pod_ip} {h.name}" for h in self.minions]

    # --- faults

    def set_underlay_mtu(self, host: Host, mtu: int) -> None:
        """Both ends of the host's link into the VPC (an instance without jumbo frames)."""
        run("ip", "-n", host.ns, "link", "set", "eth0", "mtu", str(mtu))
        run("ip", "-n", self.vpc, "link", "set", f"v{host.index}", "mtu", str(mtu))

    def forget_peer(self, host: Host, peer: Host) -> None:
        """host loses peer's VXLAN forwarding entry (a lease flanneld never saw): a black hole."""
        run("bridge", "-n", host.ns, "fdb", "del", peer.vtep_mac, "dev", "flannel.1", "dst", peer.underlay_ip)


def run(*argv: str, input: str | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]


def _host(c: Cluster, h: Host) -> None:
    run("ip", "netns", "add", h.ns)
    run("ip", "-n", c.vpc, "link", "add", "name", f"v{h.index}", "mtu", str(UNDERLAY_MTU), "type", "veth",
        "peer", "name", "eth0", "netns", h.ns)
    run("ip", "-n", c.vpc, "link", "set", f"v{h.index}", "master", "br0", "up")
    run("ip", "-n", h.ns, "link", "set", "lo", "up")
    run("ip", "-n", h.ns, "link", "set", "eth0", "mtu", str(UNDERLAY_MTU), "up")
    run("ip", "-n", h.ns, "addr", "add", f"{h.underlay_ip}/24", "dev", "eth0")
    run("ip", "netns", "exec", h.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    run("ip", "-n", h.ns, "link", "add", "name", "flannel.1", "address", h.vtep_mac, "mtu", str(POD_MTU), "type", "vxlan",
        "id", "1", "local", h.underlay_ip, "dev", "eth0", "dstport", str(VXLAN_PORT), "nolearning")
    run("ip", "-n", h.ns, "addr", "add", f"{h.vtep_ip}/32", "dev", "flannel.1")
    run("ip", "-n", h.ns, "link", "set", "flannel.1", *REAL_FRAMES)
    run("ip", "-n", h.ns, "link", "set", "flannel.1", "up")


def _peer(h: Host, peer: Host) -> None:
    """What flanneld's VXLAN backend programs for each lease it sees."""
    run("ip", "-n", h.ns, "neigh", "replace", peer.vtep_ip, "lladdr", peer.vtep_mac, "dev", "flannel.1", "nud", "permanent")
    run("bridge", "-n", h.ns, "fdb", "append", peer.vtep_mac, "dev", "flannel.1", "dst", peer.underlay_ip, "self", "permanent")
    run("ip", "-n", h.ns, "route", "add", f"10.200.{peer.index}.0/24", "via", peer.vtep_ip, "dev", "flannel.1", "onlink")


def _pod(c: Cluster, h: Host, ns: str, ip: str, veth: str) -> None:
    """A pod namespace behind the host's cni0 bridge (what the bridge CNI plugin builds)."""
    run("ip", "netns", "add", ns)
    run("ip", "-n", h.ns, "link", "add", "name", veth, "mtu", str(POD_MTU), "type", "veth", "peer", "name", "eth0", "netns", ns)
    run("ip", "-n", h.ns, "link", "set", veth, "master", "cni0", "up")
    run("bridge", "-n", h.ns, "link", "set", "dev", veth, "hairpin", "on")  # the conflist's hairpinMode
    run("ip", "-n", ns, "link", "set", "lo", "up")
    run("ip", "-n", ns, "link", "set", "eth0", "mtu", str(POD_MTU), *REAL_FRAMES, "up")
    run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
    run("ip", "-n", ns, "route", "add", "default", "via", f"10.200.{h.index}.1")
    netns_dir = Path("/etc/netns") / ns
    netns_dir.mkdir(parents=True, exist_ok=True)
    c.netns_dirs.append(netns_dir)
    (netns_dir / "resolv.conf").write_text(f"nameserver {DNS_POD_IP}\noptions timeout:1 attempts:1\n")


def _kube_proxy(c: Cluster, h: Host) -> None:
    backends = ", ".join(f"{i} : {m.pod_ip} . 8080" for i, m in enumerate(c.minions))
    rules = f"""
table ip kube-ec2-smoke {{
  chain prerouting {{
    type nat hook prerouting priority dstnat;
    ip daddr {SERVICE_IP} tcp dport 80 dnat ip to numgen random mod {len(c.minions)} map {{ {backends} }}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat;
    oifname "cni0" ip saddr 10.200.{h.index}.0/24 ct status dnat masquerade
  }}
}}
"""
    run("ip", "netns", "exec", h.ns, "nft", "-f", "-", input=rules)


def _start(c: Cluster, ns: str, *argv: str) -> None:
    c.processes.append(
        subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    )


def _wait_for_echo(h: Host) -> None:
    deadline = time.monotonic() + 15
    while True:
        probe = subprocess.run(["ip", "netns", "exec", h.pod_ns or "", "curl", "-fsS", "--max-time", "1",
                                "http://127.0.0.1:8080/healthz"], capture_output=True, timeout=10)
        if probe.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"echo server in {h.pod_ns} did not start")
        time.sleep(0.1)


def _build(c: Cluster, dns_local_only: bool) -> None:
    run("ip", "netns", "add", c.vpc)
    run("ip", "-n", c.vpc, "link", "add", "name", "br0", "type", "bridge")
    run("ip", "-n", c.vpc, "link", "set", "br0", "up")
    # With br_netfilter loaded (the sandbox's host may have it), bridged IPv4 passes netfilter,
    # which fragments an oversized frame instead of dropping it as a real link does.
    if Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
        run("ip", "netns", "exec", c.vpc, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
    for h in c.hosts:
        _host(c, h)
    for h in c.hosts:
        for peer in c.hosts:
            if peer is not h:
                _peer(h, peer)
    for h in c.minions:
        run("ip", "-n", h.ns, "link", "add", "name", "cni0", "mtu", str(POD_MTU), "type", "bridge")
        run("ip", "-n", h.ns, "addr", "add", f"10.200.{h.index}.1/24", "dev", "cni0")
        run("ip", "-n", h.ns, "link", "set", "cni0", "up")
        _pod(c, h, h.pod_ns or "", h.pod_ip, "veth0")
        _kube_proxy(c, h)
        _start(c, h.pod_ns or "", sys.executable, str(ECHO), "8080")
    dns_host = c.minions[0]
    _pod(c, dns_host, c.dns_ns, DNS_POD_IP, "veth1")
    dnsmasq = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
               "--pid-file=", f"--address=/{SERVICE_NAME}/{SERVICE_IP}"]
    # --local-service: answer only clients on a subnet of its own (this node's pods); dnsmasq
    # ignores it when told where to listen, so then it listens on the pod's every address.
    dnsmasq += ["--local-service"] if dns_local_only else ["--bind-interfaces", f"--listen-address={DNS_POD_IP}"]
    _start(c, c.dns_ns, *dnsmasq)
    for h in c.minions:
        _wait_for_echo(h)


def _teardown(c: Cluster) -> None:
    for p in c.processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=10)
    for ns in c.namespaces:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
    for d in c.netns_dirs:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def cluster(minions: int = 3, dns_local_only: bool = False) -> Iterator[Cluster]:
    prefix = f"kec2smoke-{os.getpid()}-{next(_counter)}"
    c = Cluster(
        prefix=prefix,
        master=Host("master", f"{prefix}-master", 0),
        minions=[Host(f"minion-{i}", f"{prefix}-minion-{i}", i + 1, pod_ns=f"{prefix}-pod-{i}") for i in range(minions)],
        vpc=f"{prefix}-vpc",
    )
    try:
        _build(c, dns_local_only)
        yield c
    finally:
        _teardown(c)


def existing_namespaces(prefix: str) -> list[str]:
    return [line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.startswith(prefix)]
