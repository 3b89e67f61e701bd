"""What the cache stores next to a body: the response head and its checksum.

Pure: values in, values out; no files, no clocks.  ``cache.store`` keeps one
``Meta`` per object in the same index row as the body file (so neither can
exist without the other) and ``cache.coalesce`` passes ``ResponseHead`` values
from the fetching leader to the requests waiting on it.

* ``ResponseHead``: status, the headers worth keeping and the announced
  Content-Length of an upstream response, as soon as it starts.
* ``Meta``: the head of a *stored* response plus what the store knows about
  its body (size, xxh3-64 of the bytes) and the two clock readings RFC 9111
  §4.2.3 needs to compute the Age of the stored response (``request_time``,
  ``response_time``).  ``cache.freshness`` reads them; this module does not
  interpret them.

Headers kept (``storable_headers``): everything except

* hop-by-hop fields, RFC 9110 §7.6.1: ``Connection``, every field it names,
  and ``Proxy-Connection``, ``Keep-Alive``, ``TE``, ``Transfer-Encoding``,
  ``Upgrade`` (plus ``Trailer``, which only describes the chunked framing);
* message framing that the serving side recomputes: ``Content-Length`` (the
  stored ``size`` is authoritative; a 206 needs a different one anyway).

Field values carrying CR, LF or NUL are refused (RFC 9110 §5.5): a stored
header is replayed to every client, so it must never be able to split a
response.

Serialisation is compact JSON (``to_bytes`` / ``from_bytes``), one short
object per row.  ``from_bytes`` validates every field and raises ``MetaError``
(a ``ValueError``) on anything it would not have written itself; the store
turns that into a miss, never into an exception for the request.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "HOP_BY_HOP",
    "META_VERSION",
    "Meta",
    "MetaError",
    "ResponseHead",
    "storable_headers",
]

META_VERSION = 1
"""Bumped when the record layout changes; other versions read as corrupt (a miss)."""

HOP_BY_HOP = frozenset({
    # RFC 9110 §7.6.1
    "connection", "proxy-connection", "keep-alive", "te", "transfer-encoding", "upgrade",
    # framing of the upstream message, not part of the representation
    "trailer", "content-length",
})
"""Lower-cased field names never stored (see the module docstring)."""

Headers = tuple[tuple[str, str], ...]

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 §5.1 field-name = token
_BAD_VALUE = re.compile(r"[\r\n\x00]")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")


class MetaError(ValueError):
    """A stored meta record (or a head) is malformed; the object counts as absent."""


def storable_headers(headers: Iterable[tuple[str, str]]) -> Headers:
    """The fields of ``headers`` a cache may store and replay, in order.

    Drops hop-by-hop fields (including those named by ``Connection``) and
    Content-Length; raises ``MetaError`` for a field name that is not a token
    or a value with CR, LF or NUL.
    """
    pairs = [(str(name), str(value)) for name, value in headers]
    named: set[str] = set()
    for name, value in pairs:
        if name.lower() == "connection":
            named.update(option.strip().lower() for option in value.split(",") if option.strip())
    kept = []
    for name, value in pairs:
        _check_field(name, value)
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named:
            continue
        kept.append((name, value))
    return tuple(kept)


def _check_field(name: str, value: str) -> None:
    if not _TOKEN.match(name):
        raise MetaError(f"bad header name {name!r}")
    if _BAD_VALUE.search(value):
        raise MetaError(f"header {name} has a CR, LF or NUL in its value")


def _header(headers: Headers, name: str) -> str | None:
    lower = name.lower()
    for field, value in headers:
        if field.lower() == lower:
            return value
    return None


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """The start of an upstream response: status, storable headers, announced length.

    ``content_length`` is None when the upstream did not announce one (chunked);
    the body is then complete when the upstream says it is.
    """

    status: int
    headers: Headers
    content_length: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.status, bool) or not isinstance(self.status, int) or not 100 <= self.status <= 599:
            raise MetaError(f"bad status {self.status!r}")
        if self.content_length is not None and (
                isinstance(self.content_length, bool) or not isinstance(self.content_length, int)
                or self.content_length < 0):
            raise MetaError(f"bad content length {self.content_length!r}")

    @classmethod
    def build(cls, status: int, headers: Iterable[tuple[str, str]], content_length: int | None) -> ResponseHead:
        """A head from what an upstream sent: hop-by-hop fields removed."""
        return cls(status, storable_headers(headers), content_length)

    def header(self, name: str) -> str | None:
        """The first value of field ``name`` (case-insensitive), or None."""
        return _header(self.headers, name)


@dataclass(frozen=True, slots=True)
class Meta:
    """A stored response: key, head, body size and checksum, RFC 9111 clock readings.

    ``request_time`` / ``response_time`` are the caller's clock (Unix seconds)
    when the request was sent upstream and when its response began to arrive
    (RFC 9111 §4.2.3).
    """

    key: str
    status: int
    headers: Headers
    size: int
    xxh3: str  # xxhash.xxh3_64_hexdigest of the body
    request_time: float
    response_time: float

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise MetaError("meta without a key")
        if isinstance(self.status, bool) or not isinstance(self.status, int) or not 100 <= self.status <= 599:
            raise MetaError(f"bad status {self.status!r}")
        if not isinstance(self.headers, tuple):
            raise MetaError("headers must be a tuple of pairs")
        for pair in self.headers:
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
                raise MetaError(f"bad header pair {pair!r}")
            _check_field(*pair)
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise MetaError(f"bad size {self.size!r}")
        if not isinstance(self.xxh3, str) or not _HEX16.match(self.xxh3):
            raise MetaError(f"bad xxh3 {self.xxh3!r}")
        for name in ("request_time", "response_time"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise MetaError(f"bad {name} {value!r}")

    @classmethod
    def from_head(cls, key: str, head: ResponseHead, *, size: int, xxh3: str,
                  request_time: float, response_time: float) -> Meta:
        """The record of a complete body received for ``head``."""
        return cls(key, head.status, head.headers, size, xxh3, float(request_time), float(response_time))

    @property
    def head(self) -> ResponseHead:
        """The stored response as a head (length = the stored size)."""
        return ResponseHead(self.status, self.headers, self.size)

    def header(self, name: str) -> str | None:
        """The first value of field ``name`` (case-insensitive), or None."""
        return _header(self.headers, name)

    def freshened(self, headers: Iterable[tuple[str, str]], *, request_time: float,
                  response_time: float) -> Meta:
        """This record updated by a 304 (or HEAD) response's fields, RFC 9111 §3.2 / §4.3.4.

        Each storable field of ``headers`` replaces every stored field of that
        name (in the stored field's position; new names are appended);
        hop-by-hop fields and Content-Length are not taken (§3.2 exceptions).
        Body, size and checksum are unchanged; the clock readings are the
        revalidation's.
        """
        update = storable_headers(headers)
        names = {name.lower() for name, _ in update}
        merged: list[tuple[str, str]] = []
        placed: set[str] = set()
        for name, value in self.headers:
            lower = name.lower()
            if lower not in names:
                merged.append((name, value))
            elif lower not in placed:
                placed.add(lower)
                merged.extend(p for p in update if p[0].lower() == lower)
        merged.extend(p for p in update if p[0].lower() not in placed)
        return Meta(self.key, self.status, tuple(merged), self.size, self.xxh3,
                    float(request_time), float(response_time))

    def to_bytes(self) -> bytes:
        """Compact JSON, ASCII only."""
        record = {
            "v": META_VERSION, "k": self.key, "s": self.status, "h": [list(p) for p in self.headers],
            "n": self.size, "x": self.xxh3, "q": self.request_time, "r": self.response_time,
        }
        return json.dumps(record, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> Meta:
        """Parse and validate a record written by ``to_bytes``; MetaError otherwise."""
        try:
            record: Any = json.loads(bytes(data))
        except (ValueError, UnicodeDecodeError) as exc:
            raise MetaError(f"meta is not JSON: {exc}") from None
        if not isinstance(record, dict):
            raise MetaError("meta is not a JSON object")
        if set(record) != {"v", "k", "s", "h", "n", "x", "q", "r"}:
            raise MetaError(f"meta fields {sorted(record)}")
        if record["v"] != META_VERSION or isinstance(record["v"], bool):
            raise MetaError(f"meta version {record['v']!r}, expected {META_VERSION}")
        headers = record["h"]
        if not isinstance(headers, list) or not all(isinstance(p, list) and len(p) == 2 for p in headers):
            raise MetaError("meta headers are not a list of pairs")
        return cls(record["k"], record["s"], tuple((p[0], p[1]) for p in headers), record["n"], record["x"],
                   record["q"], record["r"])
