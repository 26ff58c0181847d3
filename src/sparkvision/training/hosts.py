"""Which host a training rank runs on, and which network interface carries its address: pure
standard library (no torch, no Spark), so every rule is unit-tested without a cluster.

- :func:`host_identity`: what makes two ranks "one host" for the shared-memory all-reduce —
  the host name, the kernel's boot id and the ``(st_dev, st_ino)`` of ``/dev/shm`` (two
  containers or network namespaces with one host name but their own ``/dev/shm`` are two
  hosts; a host name alone is not proof). :func:`topology` groups the ranks by it.
- :func:`interface_for` / :func:`socket_interface`: the interface that carries a task's own
  address (Spark's ``host:port`` from the barrier context, resolved here), which gloo and
  nccl must bind to: left to themselves they advertise whatever the host name resolves to —
  127.0.1.1 on stock Debian/Ubuntu hosts, which no other host can reach.
- :func:`bind_socket_interface`: sets ``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME`` to that
  interface unless the user set them.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from sparkvision.training.history import TopologyRecord

log = logging.getLogger(__name__)

#: The environment variables that pick the interface of gloo and of nccl.
SOCKET_IFNAME_VARS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
#: ``ioctl`` request: an interface's (primary) IPv4 address (``<linux/sockios.h>``).
SIOCGIFADDR = 0x8915
BOOT_ID = "/proc/sys/kernel/random/boot_id"
SHM_DIR = "/dev/shm"
IF_INET6 = "/proc/net/if_inet6"

#: What this module set in ``os.environ`` (a reused Python worker runs many tasks: a value
#: we set for an earlier task is ours to replace, a value the user set is not).
_ours: dict[str, str] = {}


# -- host identity ---------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class HostIdentity:
    """One machine as a rank sees it: ranks with equal identities share a kernel (the boot
    id) and a ``/dev/shm`` (its device and inode), so shared memory works between them."""

    hostname: str
    boot_id: str
    shm: tuple[int, int]


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def host_identity(shm_dir: str = SHM_DIR, boot_id_path: str = BOOT_ID) -> HostIdentity:
    """This process's :class:`HostIdentity`; ``(-1, -1)`` for a missing ``/dev/shm`` and
    an empty boot id where the kernel does not give one."""
    try:
        st = os.stat(shm_dir)
        shm = (int(st.st_dev), int(st.st_ino))
    except OSError:
        shm = (-1, -1)
    return HostIdentity(socket.gethostname(), _read_text(boot_id_path), shm)


def same_machine(identities: Sequence[HostIdentity]) -> bool:
    """True when every rank is on one host with one ``/dev/shm`` (and there is one at all).
    Necessary for the shared-memory all-reduce; ``ShmAllReduce.create`` still checks the
    segment itself with a nonce."""
    return (len(set(identities)) == 1 and identities[0].shm != (-1, -1)
            and identities[0].hostname != "")


def topology(identities: Sequence[HostIdentity], backend: str, shm: bool,
             compression: str | None = None) -> TopologyRecord:
    """Where ranks with these identities (one per rank, in rank order) run, as the history
    records it: ``hosts`` (distinct identities), ``ranks_per_host`` and ``host_names`` in
    the order of each host's lowest rank, ``host_of_rank``, and the backend of each level:
    ``intra_host`` (None when every host has one rank: ``shm`` when ``shm``, the
    shared-memory all-reduce, is used, else ``backend``, the process group's) and
    ``inter_host`` (``backend``; None on one host); ``compression``: the gradient
    compression the process group's all-reduce used (``compression.compression_used``)."""
    order: dict[HostIdentity, int] = {}
    host_of_rank = [order.setdefault(ident, len(order)) for ident in identities]
    counts = [host_of_rank.count(h) for h in range(len(order))]
    return TopologyRecord(
        hosts=len(order), ranks_per_host=counts, host_names=[i.hostname for i in order],
        host_of_rank=host_of_rank,
        intra_host=None if max(counts, default=1) <= 1 else ("shm" if shm else backend),
        inter_host=backend if len(order) > 1 else None, compression=compression,
    )


# -- which interface carries a task's address ------------------------------------------------

def host_part(address: str) -> str:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address → the host part."""
    address = address.strip()
    if address.startswith("["):
        return address[1: address.find("]")] if "]" in address else address[1:]
    if address.count(":") == 1:
        host, _, port = address.partition(":")
        if port.isdigit():
            return host
    return address


def resolve(host: str) -> str | None:
    """``host`` as an IP address (itself if it is one; IPv4 first), None if unresolvable."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return None
    ips = [str(info[4][0]) for info in infos]
    v4 = [ip for ip in ips if ":" not in ip]
    return (v4 or ips)[0] if ips else None


def _ipv4_of(name: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR,
                                 struct.pack("256s", name.encode()[:15]))
        except OSError:  # no IPv4 address on it (or gone)
            return None
    return socket.inet_ntoa(packed[20:24])


def _ipv6_addresses(path: str = IF_INET6) -> Iterable[tuple[str, str]]:
    """(interface, address) of every IPv6 address, from ``/proc/net/if_inet6``."""
    try:
        with open(path, encoding="ascii") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and len(fields[0]) == 32:
            out.append((fields[5], str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))))
    return out


def interface_addresses() -> dict[str, list[str]]:
    """Every interface of this network namespace and its addresses (the primary IPv4
    address, from ``ioctl(SIOCGIFADDR)``, and the IPv6 ones)."""
    out: dict[str, list[str]] = {}
    for _, name in socket.if_nameindex():
        ip = _ipv4_of(name)
        out[name] = [ip] if ip else []
    for name, ip in _ipv6_addresses():
        out.setdefault(name, []).append(ip)
    return out


def interface_for(ip: str, interfaces: Mapping[str, Sequence[str]]) -> str | None:
    """The interface among ``interfaces`` (name → addresses) that carries ``ip``; for a
    loopback address (127.0.1.1 included: the loopback interface takes all of 127/8) the
    one that carries a loopback address. None when none does."""
    try:
        wanted = ipaddress.ip_address(ip)
    except ValueError:
        return None
    for name, addresses in interfaces.items():
        for address in addresses:
            try:
                if ipaddress.ip_address(address) == wanted:
                    return name
            except ValueError:
                continue
    if wanted.is_loopback:
        for name, addresses in interfaces.items():
            if any(_is_loopback(a) for a in addresses):
                return name
    return None


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class SocketInterface:
    """A task's own address as Spark gave it, that address resolved (None: unresolvable)
    and the interface that carries it here (None: none found)."""

    address: str
    ip: str | None
    interface: str | None


def socket_interface(task_address: str,
                     interfaces: Mapping[str, Sequence[str]] | None = None) -> SocketInterface:
    """Where this task's own ``host:port`` (from ``BarrierTaskContext.getTaskInfos()``)
    lives here: its IP and the interface carrying it (``interfaces``: name → addresses,
    default :func:`interface_addresses`)."""
    host = host_part(task_address)
    ip = resolve(host)
    if ip is None:
        return SocketInterface(host, None, None)
    if interfaces is None:
        interfaces = interface_addresses()
    return SocketInterface(host, ip, interface_for(ip, interfaces))


def bind_socket_interface(interface: str | None,
                          environ: MutableMapping[str, str] | None = None,
                          ours: dict[str, str] | None = None) -> dict[str, str]:
    """Set ``GLOO_SOCKET_IFNAME`` and ``NCCL_SOCKET_IFNAME`` to ``interface`` in ``environ``
    (default ``os.environ``), except a variable the user set (one holding anything but
    the value this function set there before, tracked in ``ours``). A variable we set
    earlier is removed when ``interface`` is None. The variables as they now are."""
    environ = os.environ if environ is None else environ
    ours = _ours if ours is None else ours
    for var in SOCKET_IFNAME_VARS:
        current = environ.get(var)
        if current is not None and current != ours.get(var):
            ours.pop(var, None)  # the user's: theirs to keep
            continue
        if interface is None:
            if current is not None:
                del environ[var]
            ours.pop(var, None)
        else:
            environ[var] = interface
            ours[var] = interface
    return {var: environ[var] for var in SOCKET_IFNAME_VARS if var in environ}


def connect_failure(rank: int, world: int, hostname: str, own: SocketInterface,
                    bound: Mapping[str, str], backend: str, master: str,
                    cause: BaseException) -> str:
    """The one-line message for a process group that could not connect: this rank, its host
    and address, the interface it bound, rank 0's address, what failed and what to set."""
    var = "NCCL_SOCKET_IFNAME" if backend == "nccl" else "GLOO_SOCKET_IFNAME"
    detail = " ".join(str(cause).split())
    if len(detail) > 300:
        detail = detail[:297] + "..."
    iface = bound.get(var)
    if not iface:
        where = f"no {var}: no interface here carries {own.ip or own.address}"
    elif iface != own.interface:  # the user's choice, not the interface of the address
        where = (f"{var}={iface} as set on the executor, while the task address is on "
                 f"{own.interface or 'no interface here'}")
    else:
        where = f"bound to interface {iface}"
    return (
        f"rank {rank} of {world} on host {hostname} (task address {own.address}"
        f"{'' if own.ip in (None, own.address) else f' = {own.ip}'}, {where}) could not "
        f"connect the {backend} process group to rank 0 at {master}: "
        f"{type(cause).__name__}: {detail}; set {var} on every executor to the interface "
        f"that reaches the other hosts (e.g. --conf spark.executorEnv.{var}=eth0) and check "
        "that the executors can reach each other on any TCP port"
    )
