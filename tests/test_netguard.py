"""Table tests for the SSRF guard: addresses just inside and just outside each blocked range."""

import ipaddress

import pytest

from proxy.netguard import AddressPolicy, BlockReason, classify


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("0.0.0.0", BlockReason.UNSPECIFIED),
        ("0.255.255.255", BlockReason.UNSPECIFIED),
        ("1.0.0.0", None),
        ("126.255.255.255", None),
        ("127.0.0.1", BlockReason.LOOPBACK),
        ("127.255.255.255", BlockReason.LOOPBACK),
        ("128.0.0.0", None),
        ("9.255.255.255", None),
        ("10.0.0.0", BlockReason.PRIVATE),
        ("10.255.255.255", BlockReason.PRIVATE),
        ("11.0.0.0", None),
        ("172.15.255.255", None),
        ("172.16.0.0", BlockReason.PRIVATE),
        ("172.31.255.255", BlockReason.PRIVATE),
        ("172.32.0.0", None),
        ("192.167.255.255", None),
        ("192.168.0.0", BlockReason.PRIVATE),
        ("192.168.255.255", BlockReason.PRIVATE),
        ("192.169.0.0", None),
        ("169.253.255.255", None),
        ("169.254.169.254", BlockReason.LINK_LOCAL),
        ("169.254.0.0", BlockReason.LINK_LOCAL),
        ("169.255.0.0", None),
        ("100.63.255.255", None),
        ("100.64.0.0", BlockReason.CGNAT),
        ("100.127.255.255", BlockReason.CGNAT),
        ("100.128.0.0", None),
        ("223.255.255.255", None),
        ("224.0.0.1", BlockReason.MULTICAST),
        ("239.255.255.255", BlockReason.MULTICAST),
        ("255.255.255.255", BlockReason.RESERVED),
        ("8.8.8.8", None),
        ("93.184.216.34", None),
        ("::", BlockReason.UNSPECIFIED),
        ("::1", BlockReason.LOOPBACK),
        ("::2", BlockReason.UNSPECIFIED),  # IPv4-compatible 0.0.0.2
        ("fe80::1", BlockReason.LINK_LOCAL),
        ("febf:ffff::1", BlockReason.LINK_LOCAL),
        ("fc00::", BlockReason.UNIQUE_LOCAL),
        ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", BlockReason.UNIQUE_LOCAL),
        ("fbff:ffff::1", None),
        ("fe00::1", None),
        ("ff02::1", BlockReason.MULTICAST),
        ("::ffff:127.0.0.1", BlockReason.LOOPBACK),
        ("::ffff:169.254.169.254", BlockReason.LINK_LOCAL),
        ("::ffff:10.1.2.3", BlockReason.PRIVATE),
        ("::ffff:8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("2001:4860:4860::8888", None),
    ],
)
def test_classify_boundaries(address: str, reason: BlockReason | None) -> None:
    assert classify(address) == reason


def test_allow_networks_open_an_exception_only_inside_the_cidr() -> None:
    policy = AddressPolicy(allow=(ipaddress.ip_network("10.1.0.0/16"),))
    assert policy.check("10.1.255.255", 443) is None
    assert policy.check("10.2.0.0", 443) == BlockReason.PRIVATE
    assert policy.check("::ffff:10.1.0.1", 443) is None


def test_guard_off_allows_private_but_never_the_proxy_itself() -> None:
    policy = AddressPolicy(block_private=False).with_listeners([("127.0.0.1", 8080)])
    assert policy.check("10.0.0.1", 80) is None
    assert policy.check("127.0.0.1", 8081) is None
    assert policy.check("127.0.0.1", 8080) == BlockReason.SELF


def test_listener_on_all_interfaces_is_refused_on_loopback() -> None:
    policy = AddressPolicy(allow=(ipaddress.ip_network("127.0.0.0/8"),)).with_listeners(
        [("0.0.0.0", 8080)]
    )
    assert policy.check("127.0.0.1", 8080) == BlockReason.SELF
    assert policy.check("127.0.0.1", 9000) is None
