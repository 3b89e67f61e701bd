"""Who is the client?  The socket peer, or what trusted proxies say it was.

A request reaches the edge either straight from the player, or through
proxies (a load balancer, a CDN in front).  Only a proxy we trust may tell
us the original address, so:

* the peer of the TCP connection is the client, unless the peer is inside
  one of the configured trusted networks;
* then the forwarding header is walked **from the right** (each proxy
  appends the address it received the request from): every hop that is
  itself trusted is skipped, and the first untrusted one is the client;
* if every hop is trusted, the leftmost is the client;
* a hop that cannot be read (garbage, an RFC 7239 obfuscated identifier
  such as ``_hidden``, ``unknown``) ends the walk: the last address we could
  read (a trusted proxy's own) stands as the client.  That never lets a
  client choose its address, and a proxy's address has no country, so the
  licence gate fails closed on it.

Exactly one header is read, ``X-Forwarded-For`` by default or RFC 7239
``Forwarded``: a trusted proxy appends to the one it writes, and reading the
other would hand a client a header nobody checked.

IPv6 zone ids are dropped and IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``,
as a dual-stack socket reports IPv4 peers) become plain IPv4, so one client
has one address everywhere (trust checks, country lookups, token binding).

Pure: no I/O.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Networks = tuple[IPNetwork, ...]

X_FORWARDED_FOR = "x-forwarded-for"
FORWARDED = "forwarded"
HEADERS = (X_FORWARDED_FOR, FORWARDED)
LOOPBACK: Networks = (ipaddress.IPv4Network("127.0.0.0/8"), ipaddress.IPv6Network("::1/128"))


def normalise(addr: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 -> IPv4; IPv6 zone id dropped."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr.scope_id is not None:
            return ipaddress.IPv6Address(str(addr).partition("%")[0])
    return addr


def parse_address(text: str) -> IPAddress | None:
    """An address as proxies write it, or None when it is not one.

    Accepts ``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``, ``[2001:db8::1]``,
    ``[2001:db8::1]:443`` and zone ids (``fe80::1%eth0``); anything else
    (obfuscated identifiers, ``unknown``, host names, garbage) is None.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
    elif text.count(":") == 1:  # IPv4 with a port
        host, _, port = text.partition(":")
        if not port.isdigit():
            return None
    else:
        host = text
    host = host.partition("%")[0]
    if not host or len(host) > 45:
        return None
    if ":" not in host:
        return _ipv4(host)
    try:
        return normalise(ipaddress.IPv6Address(host))
    except ValueError:
        return None


def _ipv4(text: str) -> ipaddress.IPv4Address | None:
    """Dotted-quad IPv4 (the strict form ipaddress accepts: no leading zeros), a few times faster."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    value = 0
    for part in parts:
        if not (part.isascii() and part.isdigit()) or len(part) > 3 or (part[0] == "0" and part != "0"):
            return None
        octet = int(part)
        if octet > 255:
            return None
        value = value << 8 | octet
    return ipaddress.IPv4Address(value)


def parse_networks(items: Iterable[str]) -> Networks:
    """CIDR strings (or bare addresses) -> networks; ValueError names the bad item.

    IPv4-mapped IPv6 networks are stored as IPv4, matching ``normalise``.
    """
    out: list[IPNetwork] = []
    for item in items:
        try:
            net = ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an address or CIDR network (e.g. 10.0.0.0/8, 2001:db8::/32)") from None
        if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and \
                net.network_address.ipv4_mapped is not None:
            mapped = net.network_address.ipv4_mapped
            net = ipaddress.IPv4Network(f"{mapped}/{net.prefixlen - 96}")
        out.append(net)
    return tuple(out)


_MASKS: dict[int, tuple[Networks, tuple[tuple[int, int, int], ...]]] = {}


def _masks(networks: Networks) -> tuple[tuple[int, int, int], ...]:
    """(version, network, mask) integers of ``networks``, remembered by identity (hashing costs more)."""
    entry = _MASKS.get(id(networks))
    if entry is None or entry[0] is not networks:
        if len(_MASKS) > 64:
            _MASKS.clear()
        entry = _MASKS[id(networks)] = (networks, tuple((n.version, int(n.network_address), int(n.netmask))
                                                        for n in networks))
    return entry[1]


def is_trusted(addr: IPAddress, trusted: Networks) -> bool:
    """``addr`` in one of ``trusted`` (integer masks: ``addr in net`` costs a microsecond each)."""
    version, value = addr.version, int(addr)
    return any(v == version and value & mask == net for v, net, mask in _masks(trusted))


def _split(value: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes (RFC 7230 quoted-string, with escapes)."""
    parts: list[str] = []
    buf: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    parts.append("".join(buf))
    return parts


def _unquote(value: str) -> str | None:
    value = value.strip()
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"'):
            return None
        out, escaped = [], False
        for ch in value[1:-1]:
            if escaped:
                out.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = True
            else:
                out.append(ch)
        return "".join(out)
    return value


def forwarded_for(value: str) -> list[str | None]:
    """The ``for=`` node of each element of an RFC 7239 ``Forwarded`` value.

    An element without a readable ``for=`` (bad syntax, a repeated parameter)
    gives None at its place, so the walk stops there.
    """
    hops: list[str | None] = []
    for element in _split(value, ","):
        found: str | None = None
        seen: set[str] = set()
        good = True
        for pair in _split(element, ";"):
            if not pair.strip():
                continue
            name, eq, raw = pair.partition("=")
            name = name.strip().lower()
            if not eq or not name or name in seen:
                good = False
                break
            seen.add(name)
            if name == "for":
                found = _unquote(raw)
        hops.append(found if good else None)
    return hops


def _header_values(headers: Any, name: str) -> list[str]:
    if hasattr(headers, "getall"):  # multidict (aiohttp): every field line, in order
        return list(headers.getall(name, ()))
    if isinstance(headers, Mapping):
        for key, value in headers.items():
            if key.lower() == name:
                return [value]
        return []
    return [v for k, v in headers if k.lower() == name]  # a list of (name, value) pairs


def hops(headers: Any, header: str = X_FORWARDED_FOR) -> list[str | None]:
    """The forwarding chain from ``header``, leftmost (the original client) first."""
    values = _header_values(headers, header)
    if not values:
        return []
    joined = ",".join(values)  # several field lines are one comma-separated list (RFC 9110 §5.3)
    if header == FORWARDED:
        return forwarded_for(joined)
    return [part.strip() for part in joined.split(",")]


def client_address(peer: Any, headers: Any = None, trusted: Networks | Iterable[str] = (), *,
                   header: str = X_FORWARDED_FOR) -> IPAddress | None:
    """The client's address (see the module docstring).

    ``peer`` is the socket peer address (string or ipaddress), ``headers``
    the request headers (a multidict, a mapping or (name, value) pairs).
    ``client_address(request, trusted)`` with an aiohttp request works too.
    Returns None only when the peer itself is not an IP address (a Unix
    socket).
    """
    if not isinstance(peer, (str, ipaddress.IPv4Address, ipaddress.IPv6Address)) and hasattr(peer, "headers"):
        request = peer  # client_address(request, trusted)
        trusted = headers if headers is not None else trusted
        peer, headers = request.remote, request.headers
    networks: Networks = trusted if (id(trusted) in _MASKS or _is_networks(trusted)) else \
        parse_networks(trusted)  # type: ignore[assignment,arg-type]
    if peer is None:
        return None
    current = normalise(peer) if not isinstance(peer, str) else _parse_cached(peer)
    if current is None or not networks or not is_trusted(current, networks):
        return current
    for hop in reversed(hops(headers or (), header)):
        addr = _parse_cached(hop) if hop is not None else None
        if addr is None:  # unreadable or obfuscated hop: the last address we could read stands
            return current
        current = addr
        if not is_trusted(addr, networks):
            return addr
    return current


@functools.lru_cache(maxsize=4096)
def _parse_cached(text: str) -> IPAddress | None:
    """Peers and forwarded addresses repeat (proxies, a player's many requests): parse each once."""
    return parse_address(text)


def _is_networks(value: object) -> bool:
    return isinstance(value, tuple) and all(isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network))
                                            for n in value)
