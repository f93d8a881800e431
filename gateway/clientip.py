"""The client IP of a request, which is the socket peer unless a trusted proxy vouches for
another address in `X-Forwarded-For`, and the bucket the auth-failure throttle counts it in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
# IPv6 hands a single host a whole /64, so that is the unit one client can be held to.
_IPV6_SUBJECT_PREFIX = 64
# Peers remembered per gateway process; past this the memo starts again, so a scan of many
# addresses costs parsing, never memory.
PEER_MEMO_SIZE = 4096


def _plain(address: Address) -> Address:
    """One spelling per host: IPv4-mapped IPv6 as IPv4, and no IPv6 zone (`%eth0`)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(int(address))
    return address


def _plain_network(network: Network) -> Network:
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        return ipaddress.IPv4Network(
            (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96)
        )
    return network


class Peer(NamedTuple):
    address: Address
    text: str  # the address as audit rows and the throttle write it
    trusted: bool  # a trusted proxy: its X-Forwarded-For is believed


class TrustedProxies:
    """The proxies whose `X-Forwarded-For` is believed; parsed once, checked per request."""

    __slots__ = ("_addresses", "_networks", "_peers")

    def __init__(self, entries: Iterable[str]) -> None:
        """Addresses and CIDR networks, IPv4 or IPv6; `ValueError` names an entry that is not."""
        addresses: set[Address] = set()
        networks: list[Network] = []
        for entry in entries:
            try:
                # Host bits are forgiven (10.1.2.3/8 is 10.0.0.0/8), as most proxies' configs do.
                network = _plain_network(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR network") from None
            if network.num_addresses == 1:
                addresses.add(network.network_address)
            else:
                networks.append(network)
        self._addresses = frozenset(addresses)
        self._networks = tuple(networks)
        # A connection's peer comes back with each of its requests: parsed and judged once.
        self._peers: dict[str, Peer | None] = {}

    def __bool__(self) -> bool:
        return bool(self._addresses or self._networks)

    def trusts(self, address: Address) -> bool:
        # Containment across IP versions is simply False, so no version check is needed.
        return address in self._addresses or any(address in net for net in self._networks)

    def peer(self, text: str) -> Peer | None:
        """A socket peer as the server gave it, parsed and judged; None when it is no address."""
        try:
            return self._peers[text]
        except KeyError:
            pass
        try:
            # The peer comes from the server, never from a header: only its zone is dropped.
            address = _plain(ipaddress.ip_address(text))
        except ValueError:
            peer = None
        else:
            peer = Peer(address, str(address), self.trusts(address))
        if len(self._peers) >= PEER_MEMO_SIZE:
            self._peers.clear()
        self._peers[text] = peer
        return peer


def parse_hop(text: bytes | str) -> Address | None:
    """An address as proxies write it (`1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]:80`); else None."""
    if isinstance(text, bytes):
        if not text.isascii():
            return None
        text = text.decode("ascii")
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
        text = host
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not port.isdigit():
            return None
        text = host
    if "%" in text:
        # A zone names an interface of the sender, meaningless here and refused by Postgres.
        return None
    try:
        return _plain(ipaddress.ip_address(text))
    except ValueError:
        return None


def _hops_nearest_first(forwarded_for: Sequence[bytes]) -> Iterator[bytes]:
    """Every hop of every `X-Forwarded-For` header, the one the nearest proxy added first."""
    for value in reversed(forwarded_for):
        for hop in reversed(value.split(b",")):
            # Empty list elements are allowed by HTTP and mean nothing.
            if hop.strip():
                yield hop


def decide_client_ip(
    peer: str | None, forwarded_for: Sequence[bytes], proxies: TrustedProxies
) -> str | None:
    """The client's address, or None when the peer has none (a Unix socket).

    Walking back from the peer, each trusted proxy vouches for the hop before it; the first
    address that is not a trusted proxy is the client. A hop that does not parse vouches for
    nothing, so the walk stops at the last trusted address seen, as it does when every hop
    is trusted. Only a trusted peer's header is read, so no one else can choose their address.
    """
    known = proxies.peer(peer) if peer else None
    if known is None:
        return None
    if not known.trusted:
        return known.text
    nearest = known.address
    for raw in _hops_nearest_first(forwarded_for):
        hop = parse_hop(raw)
        if hop is None:
            break
        if not proxies.trusts(hop):
            return str(hop)
        nearest = hop
    return str(nearest)


def throttle_subject(client_ip: str | None) -> str:
    """The bucket failures are counted in: the IPv4 address, or the IPv6 address's /64."""
    address = parse_hop(client_ip) if client_ip else None
    if address is None:
        return "unknown"
    if address.version == 6:
        return str(ipaddress.IPv6Network((address, _IPV6_SUBJECT_PREFIX), strict=False))
    return str(address)
