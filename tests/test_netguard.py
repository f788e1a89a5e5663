"""Table tests for the SSRF guard: addresses just inside and just outside each blocked range."""

import ipaddress
import socket
from collections.abc import Callable

import httpx
import pytest

from proxy.netguard import AddressPolicy, BlockReason, classify
from tests.conftest import Hitl, Upstream


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


# -- IPv6 forms that embed an IPv4 are judged by that IPv4 (issue 12, item 1) -------------

# smokescreen's TestClassifyAddr table (stripe/smokescreen, pkg/smokescreen/smokescreen_test.go),
# ported row by row onto our AddressPolicy: its allowRanges are our allow_networks, its
# LocalIPs on port 4750 our own listeners. Its deny ranges, deny addresses and per-port allow
# addresses (1.1.1.1, 8.8.8.8:321, 10.0.0.1:321) have no counterpart in our configuration and
# are left out. Two rows differ on purpose: smokescreen blocks every NAT64 and 6to4 address,
# even one embedding the public 8.8.8.8; we judge the embedded address, so an IPv6-only
# network with DNS64 can still reach public IPv4 hosts (marked "public embedded").
SMOKESCREEN_POLICY = AddressPolicy(
    allow=tuple(ipaddress.ip_network(n) for n in
                ("8.8.9.0/24", "10.0.1.0/24", "172.16.1.0/24", "192.168.1.0/24", "127.0.1.0/24")),
    own_listeners=frozenset({("127.0.0.1", 4750), ("192.168.1.100", 4750), ("::1", 4750)}),
)

SMOKESCREEN_BLOCKED = [
    ("10.0.0.1", 1),
    ("172.16.0.1", 1),
    ("192.168.0.1", 1),
    ("100.64.0.1", 1),
    ("100.64.0.100", 1),
    ("100.127.255.254", 1),
    ("127.0.0.1", 1),
    ("127.255.255.255", 1),
    ("::1", 1),
    ("169.254.169.254", 1),
    ("255.255.255.255", 1),
    ("ff02:0:0:0:0:0:0:2", 1),
    ("64:ff9b::ac1c:5", 1),  # NAT64 of 172.28.0.5
    ("64:ff9b::c000:201", 1),  # NAT64 of 192.0.2.1 (documentation)
    ("64:ff9b::a00:1", 1),  # NAT64 of 10.0.0.1
    ("64:ff9b::ffff:ffff", 1),  # NAT64 of 255.255.255.255
    ("2002:c000:201::1", 1),  # 6to4 of 192.0.2.1
    ("2002:a00:1::1", 1),  # 6to4 of 10.0.0.1
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", 1),  # Teredo, client 192.0.2.45
    ("2001:0:1234:5678:9abc:def0:1234:5678", 1),  # Teredo, client 237.203.169.135 (multicast)
    ("127.0.0.1", 4750),  # self
    ("192.168.1.100", 4750),  # self
    ("::1", 4750),  # self
    ("127.0.0.1", 8080),  # loopback, another port
]

SMOKESCREEN_ALLOWED = [
    ("8.8.8.8", 1),
    ("8.8.9.8", 1),
    ("10.0.1.1", 1),
    ("172.16.1.1", 1),
    ("192.168.1.1", 1),
    ("100.63.255.254", 1),
    ("100.128.0.1", 1),
    ("127.0.1.1", 1),
    ("2001:4860:4860::8888", 1),
    ("2606:4700:4700::1111", 1),
    ("64:ff9c::1", 1),  # outside the NAT64 /96
    ("8.8.8.8", 4750),  # not one of our addresses
    ("64:ff9b::808:808", 1),  # public embedded: NAT64 of 8.8.8.8
    ("2002:808:808::1", 1),  # public embedded: 6to4 of 8.8.8.8
]


@pytest.mark.parametrize(("address", "port"), SMOKESCREEN_BLOCKED)
def test_smokescreen_blocked_rows_are_blocked(address: str, port: int) -> None:
    assert SMOKESCREEN_POLICY.check(address, port) is not None


@pytest.mark.parametrize(("address", "port"), SMOKESCREEN_ALLOWED)
def test_smokescreen_allowed_rows_are_allowed(address: str, port: int) -> None:
    assert SMOKESCREEN_POLICY.check(address, port) is None


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("64:ff9b::a9fe:a9fe", BlockReason.LINK_LOCAL),  # NAT64 well-known prefix
        ("64:ff9b::7f00:1", BlockReason.LOOPBACK),
        ("64:ff9b::1.1.1.1", None),
        ("64:ff9b:1::a9fe:a9fe", BlockReason.RESERVED),  # local-use NAT64: offset unknown
        ("64:ff9b:1:ffff::808:808", BlockReason.RESERVED),
        ("2002:a9fe:a9fe::", BlockReason.LINK_LOCAL),  # 6to4
        ("2002:7f00:1:1::1", BlockReason.LOOPBACK),
        ("2002:c0a8:101::1", BlockReason.PRIVATE),
        ("2001:0:4136:e378:8000:63bf:5601:5601", BlockReason.LINK_LOCAL),  # Teredo client 169.254.169.254
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", BlockReason.LOOPBACK),  # Teredo client 127.0.0.1
        ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", None),  # Teredo client 8.8.8.8
        ("::ffff:0:a9fe:a9fe", BlockReason.LINK_LOCAL),  # IPv4-translated (SIIT)
        ("::ffff:0:a00:1", BlockReason.PRIVATE),
        ("::ffff:a9fe:a9fe", BlockReason.LINK_LOCAL),  # IPv4-mapped
        ("::a9fe:a9fe", BlockReason.LINK_LOCAL),  # IPv4-compatible
        ("2001:db8::1", BlockReason.RESERVED),
        ("100::1", BlockReason.RESERVED),
        ("2001:4860::1", None),  # in 2001::/16 but not Teredo's 2001::/32
    ],
)
def test_transition_forms_are_judged_by_the_ipv4_they_embed(address: str, reason: BlockReason | None) -> None:
    assert classify(address) == reason


def test_allow_networks_name_the_embedded_ipv4_or_the_ipv6_form() -> None:
    by_ipv4 = AddressPolicy(allow=(ipaddress.ip_network("10.1.0.0/16"),))
    assert by_ipv4.check("64:ff9b::a01:1", 80) is None
    assert by_ipv4.check("2002:a01:1::1", 80) is None
    assert by_ipv4.check("64:ff9b::a02:1", 80) == BlockReason.PRIVATE
    local_nat64 = AddressPolicy(allow=(ipaddress.ip_network("64:ff9b:1::/48"),))
    assert local_nat64.check("64:ff9b:1::808:808", 80) is None


# -- the same forms, sent to a running proxy: plain request, CONNECT, reverse route ------

EMBEDDED_METADATA = [
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::a9fe:a9fe",  # local-use NAT64
    "2002:a9fe:a9fe::1",  # 6to4
    "2001:0:4136:e378:8000:63bf:5601:5601",  # Teredo, client 169.254.169.254
    "::ffff:0:a9fe:a9fe",  # IPv4-translated
    "::ffff:a9fe:a9fe",  # IPv4-mapped
    "::a9fe:a9fe",  # IPv4-compatible
]


def _raw_exchange(address: tuple[str, int], head: bytes) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


@pytest.mark.parametrize("address", EMBEDDED_METADATA)
def test_plain_request_to_an_embedded_metadata_address_is_blocked(hitl: Hitl, upstream: Upstream,
                                                                   address: str) -> None:
    # Raw bytes: httpx drops the brackets of an IPv6 host in a proxy's request target.
    answer = _raw_exchange(hitl.runtime.proxy_address,
                           f"GET http://[{address}]/latest/meta-data/ HTTP/1.1\r\n"
                           f"Host: [{address}]\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 403"), answer[:300]
    assert b"destination_blocked" in answer
    assert upstream.count() == 0


@pytest.mark.parametrize("address", EMBEDDED_METADATA)
def test_connect_to_an_embedded_metadata_address_is_blocked(hitl: Hitl, address: str) -> None:
    answer = _raw_exchange(hitl.runtime.proxy_address,
                           f"CONNECT [{address}]:443 HTTP/1.1\r\nHost: [{address}]:443\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert b"destination_blocked" in answer


@pytest.mark.parametrize("address", EMBEDDED_METADATA)
def test_reverse_route_to_an_embedded_metadata_address_is_blocked(make_hitl: Callable[..., Hitl],
                                                                   address: str) -> None:
    hitl = make_hitl({"proxy.routes": {"meta": f"http://[{address}]"}})
    with httpx.Client(base_url=hitl.proxy_url, trust_env=False, timeout=30) as client:
        r = client.get("/meta/latest/meta-data/")
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "destination_blocked"


def test_allow_networks_for_the_embedded_ipv4_opens_the_nat64_form_too(hitl: Hitl) -> None:
    # The test config allows 127.0.0.0/8; 64:ff9b::7f00:1 (NAT64 of 127.0.0.1) is judged as
    # 127.0.0.1 and so allowed by the guard: the failure is the dial (no NAT64 here), not the guard.
    answer = _raw_exchange(hitl.runtime.proxy_address,
                           b"GET http://[64:ff9b::7f00:1]:9/ HTTP/1.1\r\nHost: [64:ff9b::7f00:1]:9\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 502"), answer[:300]
    assert b"destination_blocked" not in answer
