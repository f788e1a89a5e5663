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
    # site-local fec0::/10 (deprecated, still routed privately in places).
    (BlockReason.RESERVED, _nets("240.0.0.0/4", "198.18.0.0/15", "192.0.0.0/24", "fec0::/10")),
)


def _unwrap(ip: IPAddress) -> IPAddress:
    """IPv4-mapped (::ffff:a.b.c.d) and NAT64-less 6to4 forms are judged as the IPv4 inside."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        # IPv4-compatible ::a.b.c.d (deprecated, but some stacks still route it)
        if int(ip) >> 32 == 0 and int(ip) > 1:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
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
        unwrapped = _unwrap(addr)
        if any(unwrapped in net for net in self.allow if net.version == unwrapped.version):
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
