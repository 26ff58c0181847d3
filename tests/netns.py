"""Emulated hosts for multi-host tests: network namespaces joined by a bridge, each "host"
with its own address, host name (resolving to 127.0.1.1, as on stock Debian/Ubuntu) and
``/dev/shm``; and a Spark standalone cluster across them (``tests/standalone.py``).

:class:`HostNetwork` (root only) makes, in the root namespace, a bridge with the first
address of a free private /24, and per host a network namespace whose ``eth0`` (one end of a
veth pair, the other end on the bridge) has the next address (no default route: nothing
beyond the bridge is reachable). :meth:`EmulatedHost.prefix`
is the command prefix that runs a program "on" that host::

    ip netns exec NS unshare --uts --mount sh -c 'hostname NAME; mount tmpfs on /dev/shm;
        bind-mount a hosts file (127.0.1.1 NAME) on /etc/hosts; exec PROGRAM…'

(the mounts live and die with the program's private mount namespace). :meth:`stop`
deletes the namespaces, veths and bridge; names carry the creating process's PID, so a run
killed before its cleanup is swept by the next one. Traffic stays on the bridge: only
addresses the test made, and 127.0.0.1.

:func:`multihost_cluster` is the Master in the root namespace on the bridge's address and
one Worker per emulated host, started as a user would on a real machine: no ``--host``,
no ``SPARK_LOCAL_IP`` (Spark finds the host name resolves to a loopback address and takes
the interface's address), no ``GLOO_SOCKET_IFNAME``. The driver runs in the root namespace
with ``spark.driver.host`` = :attr:`HostNetwork.bridge_ip`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.standalone import StandaloneCluster, WorkerLaunch

#: Prefix of every namespace and link this module makes: ``svmh-<pid>-<i>`` namespaces,
#: ``svmh<pid>b`` bridges, ``svmh<pid>v<i>`` veth ends.
PREFIX = "svmh"
#: Run inside the new UTS + mount namespaces: $1 host name, $2 hosts file, $3 /dev/shm size.
ON_HOST = ('hostname "$1" && mount -t tmpfs -o "size=$3,mode=1777" tmpfs /dev/shm && '
           'mount --bind "$2" /etc/hosts && shift 3 && exec "$@"')


class HostNetworkUnavailable(RuntimeError):
    """This machine cannot emulate hosts (not root, or ``ip``/``unshare`` missing)."""


def unavailable_reason() -> str | None:
    """Why :class:`HostNetwork` cannot work here, or None."""
    if os.geteuid() != 0:
        return "emulated hosts need root (network namespaces, bridges, mounts)"
    missing = [tool for tool in ("ip", "unshare", "mount", "hostname") if not shutil.which(tool)]
    if missing:
        return f"emulated hosts need {', '.join(missing)} (iproute2, util-linux)"
    return None


def _ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list", check=False).splitlines()
            if line.strip()]


def _links() -> list[str]:
    names = re.findall(r"^\d+: ([^:@\s]+)", _ip("-o", "link", "show", check=False), re.M)
    return names


def ours(pid: int | None = None) -> list[str]:
    """Namespaces and links this module made (by process ``pid``; default: any)."""
    ns = re.compile(rf"{PREFIX}-(\d+)-\d+$")
    link = re.compile(rf"{PREFIX}(\d+)[bv]\d*$")
    found = [n for n in _namespaces() if (m := ns.match(n))
             and (pid is None or int(m.group(1)) == pid)]
    found += [n for n in _links() if (m := link.match(n))
              and (pid is None or int(m.group(1)) == pid)]
    return found


def sweep_stale() -> list[str]:
    """Delete namespaces and links left by processes that no longer run; their names."""
    swept = []
    for name in ours():
        pid = int(re.findall(r"\d+", name)[0])
        if _alive(pid):
            continue
        if name.startswith(f"{PREFIX}-"):
            _ip("netns", "del", name, check=False)
        else:
            _ip("link", "del", name, check=False)
        swept.append(name)
    return swept


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.200.0.0–10.254.255.0 that no route or address here overlaps."""
    used = []
    for line in _ip("-o", "-4", "addr", "show", check=False).splitlines() + _ip(
            "-4", "route", "show", "table", "all", check=False).splitlines():
        for token in re.findall(r"\d+\.\d+\.\d+\.\d+(?:/\d+)?", line):
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(token, strict=False))
    start = os.getpid() % 13000
    for k in range(13000):
        n = start + k
        candidate = ipaddress.ip_network(f"10.{200 + (n // 256) % 55}.{n % 256}.0/24")
        if not any(candidate.overlaps(u) for u in used if u.prefixlen > 0):
            return candidate
    raise RuntimeError("no free 10.x.y.0/24 subnet for the emulated hosts")


@dataclass(frozen=True)
class EmulatedHost:
    """One emulated host: its network namespace, host name, address and hosts file."""

    index: int
    netns: str
    hostname: str
    ip: str
    hosts_file: Path
    shm_size: str

    def prefix(self) -> tuple[str, ...]:
        """The command prefix that runs a program on this host (it ``exec``s the program:
        same PID)."""
        return ("ip", "netns", "exec", self.netns, "unshare", "--uts", "--mount",
                "--propagation", "private", "sh", "-c", ON_HOST, "sh", self.hostname,
                str(self.hosts_file), self.shm_size)

    @property
    def veth(self) -> str:
        """The bridge-side end of this host's link (in the root namespace)."""
        return f"{PREFIX}{self.netns.split('-')[1]}v{self.index}"

    def set_link(self, up: bool) -> None:
        """Plug (``up``) or unplug this host's cable: the bridge-side end of its veth."""
        _ip("link", "set", self.veth, "up" if up else "down")

    def limit_rate(self, rate: str | None) -> None:
        """Shape what this host sends and receives to ``rate`` (``tc`` token bucket, e.g.
        ``"100mbit"``, on both ends of its link); None removes the limit."""
        for prefix in ((), ("ip", "netns", "exec", self.netns)):
            dev = self.veth if not prefix else "eth0"
            subprocess.run([*prefix, "tc", "qdisc", "del", "dev", dev, "root"],
                           capture_output=True, timeout=30)
            if rate is not None:
                done = subprocess.run(
                    [*prefix, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                     "burst", "256kb", "latency", "50ms"],
                    capture_output=True, text=True, timeout=30)
                if done.returncode != 0:
                    raise RuntimeError(f"tc on {dev} failed: {done.stderr.strip()}")

    def processes(self) -> list[tuple[int, str]]:
        """(pid, command line) of every process in this host's network namespace."""
        out = []
        for pid in _ip("netns", "pids", self.netns, check=False).split():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            out.append((int(pid), cmd.decode(errors="replace").strip()))
        return out

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on this host and wait (output captured as text)."""
        return subprocess.run([*self.prefix(), *argv], capture_output=True, text=True,
                              timeout=kwargs.pop("timeout", 60), **kwargs)


class HostNetwork:
    """``hosts`` emulated hosts on a bridge (see the module's docstring); a context manager
    that removes everything it made on exit, however the block ends."""

    def __init__(self, root: str | os.PathLike[str], hosts: int = 3,
                 name_prefix: str = "sv-host", shm_size: str = "1g") -> None:
        self.root = Path(root)
        self.count = hosts
        self.name_prefix = name_prefix
        self.shm_size = shm_size
        self.pid = os.getpid()
        self.bridge = f"{PREFIX}{self.pid}b"
        self.hosts: list[EmulatedHost] = []
        self.subnet: ipaddress.IPv4Network | None = None
        self.bridge_ip = ""

    def __enter__(self) -> HostNetwork:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Make the bridge and the hosts; on any failure, remove what was made and raise."""
        reason = unavailable_reason()
        if reason:
            raise HostNetworkUnavailable(reason)
        sweep_stale()
        try:
            self._make()
        except BaseException:
            self.stop()
            raise

    def _make(self) -> None:
        self.subnet = _free_subnet()
        addresses = list(self.subnet.hosts())
        self.bridge_ip = str(addresses[0])
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        self.root.mkdir(parents=True, exist_ok=True)
        names = [f"{self.name_prefix}-{i + 1}" for i in range(self.count)]
        ips = [str(addresses[10 + i]) for i in range(self.count)]
        # Every address of the bridge has a name (``<host>.emulated``), as a cluster's DNS
        # would give, and there is no default route: a reverse lookup (the JVM's, c10d's)
        # is answered, or fails at once, instead of waiting 10 s for an unreachable name
        # server. The host's own name resolves to 127.0.1.1 only.
        others = "".join(f"{ip}\t{name}.emulated\n" for ip, name in
                         [(self.bridge_ip, "driver"), *zip(ips, names, strict=True)])
        for i in range(self.count):
            netns, veth = f"{PREFIX}-{self.pid}-{i}", f"{PREFIX}{self.pid}v{i}"
            hostname, ip = names[i], ips[i]
            hosts_file = self.root / f"hosts-{hostname}"
            hosts_file.write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n"
                                  f"::1\tlocalhost ip6-localhost ip6-loopback\n{others}")
            _ip("netns", "add", netns)
            self.hosts.append(EmulatedHost(i, netns, hostname, ip, hosts_file,
                                           self.shm_size))
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", netns, "addr", "add", f"{ip}/24", "dev", "eth0")
            _ip("-n", netns, "link", "set", "eth0", "up")
            _ip("-n", netns, "link", "set", "lo", "up")

    def stop(self) -> None:
        """Delete every namespace (its veth end goes, and the other end with it) and the
        bridge. Idempotent; processes still in a namespace must be stopped first (they
        would keep it alive, unnamed)."""
        for name in ours(self.pid):
            if name.startswith(f"{PREFIX}-"):
                _ip("netns", "del", name, check=False)
        for name in ours(self.pid):
            _ip("link", "del", name, check=False)
        self.hosts = []

    def leftovers(self) -> list[str]:
        """What this network left behind (empty after :meth:`stop`)."""
        return ours(self.pid)


@contextlib.contextmanager
def multihost_cluster(root: str | os.PathLike[str], hosts: int = 3,
                      env: Mapping[str, str] | None = None,
                      **kwargs: Any) -> Iterator[tuple[HostNetwork, StandaloneCluster]]:
    """A :class:`HostNetwork` of ``hosts`` emulated hosts and a standalone cluster over it:
    the Master in the root namespace on the bridge's address, one Worker per host as on a
    real machine (no ``--host``, no ``SPARK_LOCAL_IP``). ``env``: for every daemon (and the
    executors). Everything is stopped and removed when the block ends."""
    root = Path(root)
    with HostNetwork(root / "net", hosts) as net, \
            StandaloneCluster(root / "cluster", workers=0, host=net.bridge_ip, env=env,
                              **kwargs) as cluster:
        for host in net.hosts:
            cluster.start_worker(wait=False, launch=WorkerLaunch(
                prefix=host.prefix(), host=None, env={"SPARK_LOCAL_IP": None}))
        cluster.wait_for_workers(hosts)
        yield net, cluster
