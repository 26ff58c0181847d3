"""training/hosts.py: which interface carries a task's address (what gloo and nccl bind to),
the environment variables set for them, host identity beyond the host name, the topology
recorded in the history, and the one-line error of a process group that cannot connect."""

from __future__ import annotations

import socket

import pytest

from sparkvision.errors import user_error_message
from sparkvision.training import hosts
from sparkvision.training.hosts import HostIdentity, SocketInterface


@pytest.mark.parametrize(("address", "host"), [
    ("10.0.0.7:41234", "10.0.0.7"), ("node-a:7077", "node-a"), ("node-a", "node-a"),
    ("[fd00::7]:41234", "fd00::7"), ("fd00::7", "fd00::7"), (" 127.0.0.1:1 ", "127.0.0.1"),
])
def test_host_part_of_task_addresses(address, host):
    assert hosts.host_part(address) == host


def test_resolve_keeps_addresses_and_resolves_names():
    assert hosts.resolve("10.1.2.3") == "10.1.2.3"
    assert hosts.resolve("fd00::0:7") == "fd00::7"
    assert hosts.resolve("localhost") in ("127.0.0.1", "::1")
    assert hosts.resolve("no-such-host.invalid") is None


def test_this_machines_interfaces_include_loopback():
    found = hosts.interface_addresses()
    loopback = hosts.interface_for("127.0.0.1", found)
    assert loopback is not None and "127.0.0.1" in found[loopback]
    assert {name for _, name in socket.if_nameindex()} <= set(found)


INTERFACES = {"lo": ["127.0.0.1", "::1"], "eth0": ["10.213.0.11", "fd00::11"],
              "docker0": [], "eth1": ["192.168.5.2"]}


@pytest.mark.parametrize(("ip", "interface"), [
    ("10.213.0.11", "eth0"), ("192.168.5.2", "eth1"), ("fd00::11", "eth0"),
    ("127.0.0.1", "lo"),
    # the host name of a stock Debian host resolves to 127.0.1.1: the loopback interface
    ("127.0.1.1", "lo"), ("::1", "lo"),
    ("10.213.0.12", None), ("not an address", None),
])
def test_the_interface_carrying_an_address(ip, interface):
    assert hosts.interface_for(ip, INTERFACES) == interface


def test_socket_interface_of_a_task_address():
    assert hosts.socket_interface("10.213.0.11:35555", INTERFACES) == SocketInterface(
        "10.213.0.11", "10.213.0.11", "eth0")
    assert hosts.socket_interface("10.9.9.9:1", INTERFACES).interface is None
    assert hosts.socket_interface("no-such-host.invalid:1", INTERFACES) == SocketInterface(
        "no-such-host.invalid", None, None)
    # on this machine, the real interfaces
    assert hosts.socket_interface("127.0.0.1:4040").interface is not None


def test_bind_sets_both_variables_and_keeps_the_users():
    env: dict[str, str] = {}
    ours: dict[str, str] = {}
    assert hosts.bind_socket_interface("eth0", env, ours) == {
        "GLOO_SOCKET_IFNAME": "eth0", "NCCL_SOCKET_IFNAME": "eth0"}
    # a reused Python worker's next task, on another interface: ours, so replaced
    assert hosts.bind_socket_interface("eth1", env, ours)["GLOO_SOCKET_IFNAME"] == "eth1"
    # no interface found: what we set goes, gloo/nccl choose themselves
    assert hosts.bind_socket_interface(None, env, ours) == {} and env == {}
    # the user's own value stays, whatever we find
    env = {"GLOO_SOCKET_IFNAME": "ib0"}
    assert hosts.bind_socket_interface("eth0", env, ours) == {
        "GLOO_SOCKET_IFNAME": "ib0", "NCCL_SOCKET_IFNAME": "eth0"}
    assert hosts.bind_socket_interface(None, env, ours) == {"GLOO_SOCKET_IFNAME": "ib0"}


def test_host_identity_is_more_than_the_host_name(tmp_path):
    me = hosts.host_identity()
    assert me.hostname == socket.gethostname() and me.shm != (-1, -1)
    assert me == hosts.host_identity()
    other_shm = tmp_path / "shm"
    other_shm.mkdir()
    # one host name, another /dev/shm (a container, a network namespace): another host
    twin = hosts.host_identity(shm_dir=str(other_shm))
    assert twin.hostname == me.hostname and twin != me
    assert not hosts.same_machine([me, twin])
    assert hosts.same_machine([me, me])
    assert not hosts.same_machine([me, HostIdentity(me.hostname, "another-boot", me.shm)])
    missing = hosts.host_identity(shm_dir=str(tmp_path / "none"),
                                  boot_id_path=str(tmp_path / "none"))
    assert missing.shm == (-1, -1) and missing.boot_id == ""
    assert not hosts.same_machine([missing, missing])


def _host(name: str, shm: int = 1) -> HostIdentity:
    return HostIdentity(name, "boot", (40, shm))


def test_topology_of_three_hosts_one_rank_each():
    t = hosts.topology([_host("a"), _host("b"), _host("c")], "gloo", shm=False)
    assert (t.hosts, t.ranks_per_host, t.host_names, t.host_of_rank) == (
        3, [1, 1, 1], ["a", "b", "c"], [0, 1, 2])
    assert (t.intra_host, t.inter_host) == (None, "gloo")


def test_topology_of_one_host_and_of_two_hosts_with_two_ranks():
    one = hosts.topology([_host("a"), _host("a")], "gloo", shm=True)
    assert (one.hosts, one.ranks_per_host, one.intra_host, one.inter_host) == (
        1, [2], "shm", None)
    # same host name, own /dev/shm each: two hosts; hosts in the order of their lowest rank
    mixed = hosts.topology([_host("b", 2), _host("b", 3), _host("b", 2), _host("a")], "gloo",
                           shm=False)
    assert (mixed.hosts, mixed.ranks_per_host, mixed.host_of_rank) == (3, [2, 1, 1],
                                                                      [0, 1, 0, 2])
    assert mixed.host_names == ["b", "b", "a"]
    assert (mixed.intra_host, mixed.inter_host) == ("gloo", "gloo")


def test_a_connect_failure_is_one_line_naming_host_rank_address_and_the_fix():
    cause = RuntimeError("Gloo connectFullMesh failed with [../gloo/transport/tcp/pair.cc:144]"
                         " timed out connecting:\n SO_ERROR: Connection refused, "
                         "remote=[127.0.1.1]:45293")
    own = SocketInterface("10.213.0.12", "10.213.0.12", "eth0")
    message = hosts.connect_failure(2, 3, "host-c", own, {"GLOO_SOCKET_IFNAME": "eth0"},
                                    "gloo", "10.213.0.11:41000", cause)
    assert "\n" not in message
    for part in ("rank 2 of 3", "host host-c", "10.213.0.12", "interface eth0",
                 "rank 0 at 10.213.0.11:41000", "remote=[127.0.1.1]:45293",
                 "set GLOO_SOCKET_IFNAME", "spark.executorEnv.GLOO_SOCKET_IFNAME"):
        assert part in message, (part, message)
    unbound = hosts.connect_failure(1, 2, "h", SocketInterface("node-b", "10.0.0.2", None), {},
                                    "nccl", "10.0.0.1:1", TimeoutError("x" * 1000))
    assert "node-b = 10.0.0.2" in unbound and "no NCCL_SOCKET_IFNAME" in unbound
    assert "set NCCL_SOCKET_IFNAME" in unbound and len(unbound) < 900
    users = hosts.connect_failure(0, 2, "h", own, {"GLOO_SOCKET_IFNAME": "lo"}, "gloo",
                                  "10.213.0.12:1", cause)
    assert "GLOO_SOCKET_IFNAME=lo as set on the executor, while the task address is on eth0" \
        in users
    # raised as TrainingError in the task, it reaches the CLI as this one line
    wrapped = Exception("Job aborted ...\nTraceback (most recent call last):\n  ...\n"
                        f"sparkvision.errors.TrainingError: {message}\n\tat org.apache...")
    assert user_error_message(wrapped) == message
