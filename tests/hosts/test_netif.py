"""Which interface a host's ranks use: --cluster-interface, else the user's GLOO_SOCKET_IFNAME,
else the interface of the address the other hosts reach this one at (no processes here)."""

from __future__ import annotations

import pytest

from serving.engine.distributed import netif
from serving.engine.distributed.netif import GLOO, NCCL, InterfaceError, choose


def test_found_address_gives_its_interface_for_gloo_and_exactly_that_one_for_nccl() -> None:
    c = choose("", "127.0.0.1", environ={})
    assert (c.interface, c.address, c.how) == ("lo", "127.0.0.1", "found")
    assert c.env == {GLOO: "lo", NCCL: "=lo"}  # NCCL matches prefixes unless "=" says exact
    # An IPv4-mapped address (a listener on ::) is the same address.
    assert choose("", "::ffff:127.0.0.1", environ={}).interface == "lo"


def test_the_flag_wins_over_the_users_variables_and_takes_a_name_or_an_address() -> None:
    mine = {GLOO: "eth9", NCCL: "eth9"}
    by_name = choose("lo", "203.0.113.9", environ=mine)
    by_address = choose("127.0.0.1", "203.0.113.9", environ=mine)
    for c in (by_name, by_address):
        assert (c.interface, c.address, c.how) == ("lo", "127.0.0.1", "--cluster-interface")
        assert c.env == {GLOO: "lo", NCCL: "=lo"}


def test_variables_the_user_set_are_kept_and_only_the_others_are_set() -> None:
    c = choose("", "203.0.113.9", environ={GLOO: "lo,eth0"})
    assert (c.interface, c.address, c.how) == ("lo", "127.0.0.1", GLOO)
    assert c.env == {NCCL: "=lo"}  # gloo's variable stays as the user set it
    c = choose("", "127.0.0.1", environ={NCCL: "^docker"})
    assert c.env == {GLOO: "lo"} and c.how == NCCL


def test_an_interface_or_address_this_host_lacks_is_one_line_naming_what_it_has() -> None:
    with pytest.raises(InterfaceError, match=r"no interface 'nope0' .*\(it has lo 127\.0\.0\.1"):
        choose("nope0", "127.0.0.1", environ={})
    with pytest.raises(InterfaceError, match=r"no interface of this host has the address 192\.0"):
        choose("", "192.0.2.254", environ={})


def test_loopback_is_told_apart() -> None:
    assert netif.is_loopback("127.0.0.5") and netif.is_loopback("::1")
    assert not netif.is_loopback("10.231.1.1") and not netif.is_loopback("not-an-address")
