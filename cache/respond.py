"""Shaping a cache hit: the one place a cached response becomes an answer.

Pure: no sockets, files or clocks.  ``respond(cached, method, headers, now,
node, age)`` takes what the cache stored about an object (``Cached``), the
request's method and header fields, the time, the node's name and the Age the
freshness core computed, and returns a ``Reply``: the status, the response
header fields, and which bytes of the object to send.  The fast path
(``cache.fastpath``) and the node's aiohttp handlers both call it, so a 206 or
a 304 from a cache is decided and shaped identically whichever way the
request came in.

Decisions:

* Preconditions and Range are ``legato.http.evaluate`` (RFC 9110 §13.2.2,
  §14.2), so a cache answers 200/206/304/412/416 exactly like the origin.
  A Last-Modified counts as a strong validator when the stored response's
  Date is at least a second after it (RFC 9110 §8.8.2.2).
* Only stored 200 responses are range- and condition-evaluated; any other
  stored status (a cached 404, say) is sent whole, as stored (§13.2.1:
  preconditions apply to 2xx/412 outcomes; §14.2: ranges to 200).
* Header fields: the stored end-to-end fields as received, minus hop-by-hop
  fields (RFC 9110 §7.6.1, including those the stored Connection names) and
  the fields this module recomputes: ``Content-Length``, ``Content-Range``,
  ``Date``, ``Age``, ``Via``, ``X-Cache``, ``Accept-Ranges`` and CORS
  (``Access-Control-*``, the ``Origin`` member of ``Vary``).  Then:
  ``Via: <upstream Via>, 1.1 <node>`` (§7.6.3), ``X-Cache: HIT``, ``Age``
  (RFC 9111 §5.1, §4: MUST be sent when a stored response is reused),
  ``Date`` (this node's clock: the response is generated now, its age is in
  Age), ``Accept-Ranges: bytes``, ``Content-Length``, ``Content-Range`` for
  206/416 (§14.4), and CORS from this node's configuration
  (``legato.http.cors_headers``), not the upstream's.
* 304 carries only Cache-Control, Content-Location, Date, ETag, Expires and
  Vary of the stored fields (§15.4.5), plus Age, Via, X-Cache and CORS.
* 412 and 416 are short plain-text errors with the reason (as the origin
  sends them), ``Cache-Control: no-store``, ETag (412) or
  ``Content-Range: bytes */size`` (416).
* HEAD gets the GET 200 header fields, no body (§9.3.2).

Performance: everything that depends only on the stored object and the node
name (filtered fields, the Via value, validators) is computed once per
``Cached`` instance and kept in it; per request remain the header folding, the
precondition evaluation and a handful of list appends.  The reply to an
unconditional GET/HEAD is also kept (one per object): within the same second
and Age the same ``Reply`` object is returned again, so callers may cache
what they derive from it (the fast path keeps its serialised head).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus

from legato import http as h

__all__ = ["REQUEST_FIELDS", "Cached", "Reply", "plain_origin", "respond"]

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade", "trailer",
     "proxy-authenticate", "proxy-authorization"}
)
"""RFC 9110 §7.6.1 (and the non-standard Keep-Alive / Proxy-Connection)."""

RECOMPUTED = frozenset(
    {"content-length", "content-range", "date", "age", "via", "x-cache", "accept-ranges"}
)
"""Stored fields replaced by values this module computes per response."""

NOT_MODIFIED_FIELDS = frozenset({"cache-control", "content-location", "etag", "expires", "vary"})
"""Stored fields a 304 repeats (RFC 9110 §15.4.5; Date is recomputed)."""

REQUEST_FIELDS = h.CONDITIONAL_HEADERS | {"origin"}
"""The request fields ``respond`` reads (lower-case)."""


@dataclass(frozen=True, eq=False)
class Cached:
    """What a cache stored about one response, as ``respond`` needs it.

    * ``status``: the stored status code (normally 200).
    * ``headers``: the stored response header fields as received from
      upstream, in order, any case; hop-by-hop fields may be included, they
      are dropped here.
    * ``size``: the stored body's length in bytes.
    * ``etag``: the ETag field value (``'"abc"'``, ``'W/"x"'``) or None.
    * ``last_modified``: Last-Modified as Unix seconds, or None.
    * ``response_time``: when the response was received (Unix seconds,
      RFC 9111 §4.2.3); stands in for the stored Date when judging whether
      Last-Modified is a strong validator, if ``date`` is None.
    * ``date``: the stored Date as Unix seconds, or None.

    A cache keeps one instance per stored object and reuses it: derived values
    are memoised inside (per node name), which is what keeps ``respond``
    cheap.  Body integrity (xxh3) is the store's job before it offers a hit.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    size: int
    etag: str | None = None
    last_modified: int | None = None
    response_time: float = 0.0
    date: float | None = None
    _memo: dict[str, _Shape] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def from_stored(cls, status: int, headers: Iterable[tuple[str, str]], size: int,
                    response_time: float) -> Cached:
        """Build from a stored head, reading ETag, Last-Modified and Date from its fields.

        For adapters of a store record (status, header pairs, size, response
        time): an unparseable Last-Modified or Date counts as absent.
        """
        pairs = tuple(headers)
        found: dict[str, str] = {}
        for name, value in pairs:
            found.setdefault(name.lower(), value)
        etag = found.get("etag")
        lm = found.get("last-modified")
        date = found.get("date")
        return cls(status, pairs, size,
                   etag=etag if etag and h.parse_etag(etag) else None,
                   last_modified=h.parse_http_date(lm, response_time) if lm else None,
                   response_time=response_time,
                   date=h.parse_http_date(date, response_time) if date else None)


@dataclass(slots=True)
class Reply:
    """The decided response.

    Send ``headers`` with ``status``, then either the object bytes
    ``[first, first + length)`` (``length`` 0: none, e.g. HEAD or 304) or
    ``body`` (short generated text of a 412/416).  ``Content-Length`` is among
    the headers whenever a body could follow (not for 304).  Replies may be
    shared between requests (see ``respond``): treat them as read-only.
    """

    status: int
    headers: list[tuple[str, str]]
    first: int = 0
    length: int = 0
    body: bytes = b""


@dataclass(slots=True)
class _Shape:
    """What depends only on a stored object and the node name.

    ``plain_key``/``plain_reply`` memoise the last unconditional 200: a hot
    object is asked for many times a second with the same Age and Date.
    """

    whole: tuple[tuple[str, str], ...]  # forwarded fields + Via + X-Cache
    full: tuple[tuple[str, str], ...]  # 200/206: whole + Accept-Ranges
    not_modified: tuple[tuple[str, str], ...]  # 304: the §15.4.5 fields + Via + X-Cache
    errors: tuple[tuple[str, str], ...]  # 412/416: Via + X-Cache
    validators: h.Validators
    size_text: str
    plain_key: tuple[object, ...] | None = None
    plain_reply: Reply | None = None


def _connection_named(headers: Iterable[tuple[str, str]]) -> set[str]:
    """Field names a stored Connection field lists: hop-by-hop too (§7.6.1)."""
    return {opt.strip(" \t").lower() for name, value in headers if name.lower() == "connection"
            for opt in value.split(",") if opt.strip(" \t")}


def _vary_without_origin(value: str) -> str:
    """A stored Vary minus ``Origin``: CORS variance is this node's to declare."""
    return ", ".join(m.strip() for m in value.split(",") if m.strip() and m.strip().lower() != "origin")


def _forwarded(cached: Cached) -> list[tuple[str, str]]:
    """Stored end-to-end fields to repeat, in stored order."""
    dropped = HOP_BY_HOP | RECOMPUTED | _connection_named(cached.headers)
    out = []
    for name, value in cached.headers:
        key = name.lower()
        if key in dropped or key.startswith("access-control-"):
            continue
        if key == "vary":
            value = _vary_without_origin(value)
            if not value:
                continue
        out.append((name, value))
    return out


def _via(cached: Cached, node: str) -> str:
    """Upstream Via values with this node appended (RFC 9110 §7.6.3)."""
    upstream = [value for name, value in cached.headers if name.lower() == "via"]
    return ", ".join([*upstream, f"1.1 {node}"])


def _check_fields(fields: Iterable[tuple[str, str]]) -> None:
    """Refuse field names or values that could split a response (CR, LF, NUL)."""
    for name, value in fields:
        if _UNSAFE.search(name) or _UNSAFE.search(value) or not name:
            raise ValueError(f"unsafe stored header field {name[:40]!r}")


_UNSAFE = re.compile(r"[\r\n\x00]")


def _shape(cached: Cached, node: str) -> _Shape:
    """The per-object, per-node part of every reply (memoised in ``cached``)."""
    shape = cached._memo.get(node)
    if shape is not None:
        return shape
    forwarded = _forwarded(cached)
    ours = (("Via", _via(cached, node)), ("X-Cache", "HIT"))
    _check_fields((*forwarded, *ours))
    date = cached.date if cached.date is not None else cached.response_time
    strong = cached.last_modified is not None and h.last_modified_is_strong(cached.last_modified, date)
    shape = _Shape(
        whole=(*forwarded, *ours),
        full=(*forwarded, *ours, ("Accept-Ranges", "bytes")),
        not_modified=(*((n, v) for n, v in forwarded if n.lower() in NOT_MODIFIED_FIELDS), *ours),
        errors=ours,
        validators=h.Validators(cached.size, cached.etag, cached.last_modified, strong),
        size_text=str(cached.size),
    )
    cached._memo[node] = shape
    return shape


@functools.lru_cache(maxsize=1024)
def _cors(origins: tuple[str, ...], origin: str | None) -> tuple[tuple[str, str], ...]:
    """CORS fields for a response (memoised: usually one value per node)."""
    return tuple(h.cors_headers(origins, origin).items())


def _error(status: int, reason: str, shape: _Shape, extra: list[tuple[str, str]],
           common: list[tuple[str, str]], method: str) -> Reply:
    """A short plain-text error, like the origin's (no body for HEAD)."""
    body = f"{status} {HTTPStatus(status).phrase}: {reason}\n".encode()
    headers = [*shape.errors, *common, *extra, ("Cache-Control", "no-store"),
               ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    return Reply(status, headers, body=b"" if method == "HEAD" else body)


def plain_origin(headers: Iterable[tuple[str, str]]) -> tuple[bool, str | None]:
    """(plain, Origin) of a request's fields (names lower-cased, as ``cache.h1`` gives them).

    Plain: no field ``respond`` reads but one Origin line at most.  To a
    plain request ``respond`` answers a 200 object with a reply that depends
    only on the object, the method, the age, the second, the Origin and the
    node's allowed origins (the fast path's hot replies rely on this).
    """
    origin = None
    for name, value in headers:
        if name in REQUEST_FIELDS:
            if name != "origin" or origin is not None:
                return False, None
            origin = value
    return True, origin


def respond(
    cached: Cached,
    method: str,
    headers: Iterable[tuple[str, str]],
    now: float,
    node: str,
    age: int,
    cors_origins: tuple[str, ...] = ("*",),
) -> Reply:
    """Decide and shape the answer to a GET or HEAD from a cached object.

    ``headers`` are the request's field lines (name, value), any case;
    ``now`` is Unix time; ``age`` the response's current age in seconds
    (RFC 9111 §4.2.3, from the freshness core); ``cors_origins`` the node's
    allowed origins (``legato.http.parse_origins``).
    """
    shape = _shape(cached, node)
    request = h.fold_headers(headers, REQUEST_FIELDS)
    origin = request.get("origin")
    plain = cached.status == 200 and len(request) == (origin is not None)  # no conditional field
    if plain:
        key = (method, age, int(now), origin, cors_origins)
        if shape.plain_key == key:
            assert shape.plain_reply is not None
            return shape.plain_reply
    cors = _cors(cors_origins, origin) if cors_origins else ()
    common = [("Age", str(max(0, age))), ("Date", h.http_date(now)), *cors]
    if plain:
        out = [*shape.full, *common, ("Content-Length", shape.size_text)]
        reply = Reply(200, out, 0, 0 if method == "HEAD" else cached.size)
        shape.plain_key, shape.plain_reply = key, reply
        return reply
    if cached.status != 200:
        return _whole(cached, method, shape, common)
    decision = _decide(method, request, shape.validators, now)
    status = decision.status
    if status == 200:
        out = [*shape.full, *common, ("Content-Length", shape.size_text)]
        return Reply(200, out, 0, 0 if method == "HEAD" else cached.size)
    if status == 206:
        rng = decision.range
        assert rng is not None
        out = [*shape.full, *common, ("Content-Length", str(rng.length)),
               ("Content-Range", rng.content_range(cached.size))]
        return Reply(206, out, rng.first, rng.length)
    if status == 304:
        return Reply(304, [*shape.not_modified, *common])
    if status == 412:
        return _error(412, decision.reason, shape, [("ETag", cached.etag)] if cached.etag else [], common, method)
    return _error(416, decision.reason, shape, [("Content-Range", h.unsatisfied_content_range(cached.size))],
                  common, method)


_OK = h.Decision(200)
_parse_range = functools.lru_cache(maxsize=4096)(h.parse_range)
"""``legato.http.parse_range``, memoised: players repeat the same few ranges."""


def _decide(method: str, request: dict[str, str], validators: h.Validators, now: float) -> h.Decision:
    """``legato.http.evaluate``, with its two commonest outcomes taken directly.

    No conditional field at all is a 200; a GET whose only conditional field
    is Range is decided by the range alone (§13.2.2 step 5 without If-Range),
    through the memoised parser.  Everything else is ``evaluate`` itself.
    """
    if not request.keys() - _NOT_CONDITIONAL:
        return _OK
    if method == "GET" and not request.keys() - _RANGE_ONLY:
        rd = _parse_range(request["range"], validators.size)
        if rd.outcome is h.RangeOutcome.PARTIAL:
            return h.Decision(206, rd.range)
        if rd.outcome is h.RangeOutcome.FULL:
            return _OK
        return h.Decision(416, reason=rd.reason)
    return h.evaluate(method, request, validators, now)


_NOT_CONDITIONAL = frozenset({"origin"})
_RANGE_ONLY = frozenset({"origin", "range"})


def _whole(cached: Cached, method: str, shape: _Shape, common: list[tuple[str, str]]) -> Reply:
    """A stored non-200 response, sent as stored (no ranges, no preconditions)."""
    out = [*shape.whole, *common, ("Content-Length", shape.size_text)]
    return Reply(cached.status, out, 0, 0 if method == "HEAD" else cached.size)
