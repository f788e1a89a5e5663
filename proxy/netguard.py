"""Which addresses the proxy may dial (the SSRF guard).

The check runs on the *resolved address that is then dialled*, never on the hostname a
request names: a name can resolve to a public address when the request is judged and to
169.254.169.254 a moment later (DNS rebinding). ``upstream.GuardedBackend`` resolves once,
classifies each address here, and connects to that exact address.

Reasons form a closed set so that logs, metrics and the agent's error all name one of them.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class BlockReason(enum.StrEnum):
    LOOPBACK = "loopback"
    PRIVATE = "private network"
    LINK_LOCAL = "link-local (cloud metadata)"
    CGNAT = "carrier-grade NAT"
    UNIQUE_LOCAL = "unique-local IPv6"
    UNSPECIFIED = "unspecified address"
    MULTICAST = "multicast"
    RESERVED = "reserved range"
    SELF = "the proxy's own listener"


def _nets(*cidrs: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# Ordered: the first matching row names the reason.
_BLOCKED: tuple[tuple[BlockReason, tuple[Network, ...]], ...] = (
    (BlockReason.UNSPECIFIED, _nets("0.0.0.0/8", "::/128")),
    (BlockReason.LOOPBACK, _nets("127.0.0.0/8", "::1/128")),
    (BlockReason.PRIVATE, _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")),
    (BlockReason.LINK_LOCAL, _nets("169.254.0.0/16", "fe80::/10")),
    (BlockReason.CGNAT, _nets("100.64.0.0/10")),
    (BlockReason.UNIQUE_LOCAL, _nets("fc00::/7")),
    (BlockReason.MULTICAST, _nets("224.0.0.0/4", "ff00::/8")),
    # 240/4 incl. broadcast, benchmarking 198.18/15, IETF protocol assignments 192.0.0/24,
    # the documentation nets (never routed publicly: only a local network answers there),
    # site-local fec0::/10 (deprecated, still routed privately in places), discard-only
    # 100::/64, and the local-use NAT64 prefix 64:ff9b:1::/48 (RFC 8215): its translator may
    # embed the IPv4 at any RFC 6052 offset (/48 ... /96), so the proxy cannot tell which
    # IPv4 an address in it reaches; an operator who runs one opens it with allow_networks.
    (BlockReason.RESERVED, _nets("240.0.0.0/4", "198.18.0.0/15", "192.0.0.0/24", "192.0.2.0/24",
                                 "198.51.100.0/24", "203.0.113.0/24", "fec0::/10", "100::/64",
                                 "2001:db8::/32", "64:ff9b:1::/48")),
)

_NAT64 = 0x0064_FF9B_0000_0000_0000_0000  # 64:ff9b::/96 (RFC 6052 well-known prefix), >> 32
_TRANSLATED = 0xFFFF_0000  # ::ffff:0:0/96 (IPv4-translated, RFC 2765), >> 32


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 transition form delivers to, or None for a plain IPv6.

    Each of these forms ends at an IPv4 host (through a translator, a relay or the dual
    stack itself), so that host is what the guard judges: ``64:ff9b::a9fe:a9fe`` is the
    cloud metadata service wherever a NAT64 gateway exists.
    """
    value = int(ip)
    if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d, the dual-stack socket's own form
        return ip.ipv4_mapped
    high = value >> 32
    if high in (_NAT64, _TRANSLATED) or (high == 0 and value > 1):
        # NAT64 well-known prefix, IPv4-translated, IPv4-compatible ::a.b.c.d (deprecated,
        # some stacks still route it); "::" and "::1" are themselves, not 0.0.0.0/0.0.0.1.
        return ipaddress.IPv4Address(value & 0xFFFF_FFFF)
    if ip.sixtofour is not None:  # 2002:AABB:CCDD::/48 is relayed to AA.BB.CC.DD
        return ip.sixtofour
    if ip.teredo is not None:  # 2001:0:SERVER:FLAGS:PORT:CLIENT, the client bit-inverted
        return ip.teredo[1]
    return None


def _unwrap(ip: IPAddress) -> IPAddress:
    """The address the guard judges: the embedded IPv4 of a transition form, else itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            return inner
    return ip


def classify(ip: IPAddress | str) -> BlockReason | None:
    """The reason an address is not a public destination, or None when it is."""
    addr = _unwrap(ipaddress.ip_address(ip) if isinstance(ip, str) else ip)
    for reason, nets in _BLOCKED:
        if any(addr in net for net in nets if net.version == addr.version):
            return reason
    return None


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """``block_private_networks`` with its ``allow_networks`` exceptions, plus the proxy's
    own listeners, which are refused even when allowed (a request to itself would loop)."""

    block_private: bool = True
    allow: tuple[Network, ...] = ()
    own_listeners: frozenset[tuple[str, int]] = frozenset()

    def check(self, ip: IPAddress | str, port: int) -> BlockReason | None:
        addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        if self._is_own_listener(_unwrap(addr), port):
            return BlockReason.SELF
        if not self.block_private:
            return None
        reason = classify(addr)
        if reason is None:
            return None
        # An exception may name the embedded IPv4 (10.1.0.0/16 also opens ::ffff:10.1.0.1
        # and 64:ff9b::a01:1) or the IPv6 form itself (64:ff9b:1::/48 for a local NAT64).
        for candidate in {addr, _unwrap(addr)}:
            if any(candidate in net for net in self.allow if net.version == candidate.version):
                return None
        return reason

    def _is_own_listener(self, addr: IPAddress, port: int) -> bool:
        for host, own_port in self.own_listeners:
            if own_port != port:
                continue
            own = ipaddress.ip_address(host)
            if own == addr:
                return True
            # A listener on 0.0.0.0 / :: answers on every local address.
            if own.is_unspecified and (addr.is_loopback or addr.is_unspecified):
                return True
        return False

    def with_listeners(self, listeners: Iterable[tuple[str, int]]) -> AddressPolicy:
        return AddressPolicy(self.block_private, self.allow, frozenset(listeners))
