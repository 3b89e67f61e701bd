"""RFC 9111 freshness and storability for a shared cache, as pure functions.

Two questions, asked by the store's I/O shell and answered from plain
values (status, header pairs, times as Unix floats):

1. **May this response be stored?**  ``storable(...)`` -> ``Storability``
   (RFC 9111 §3, §3.5, §5.2).
2. **May this stored response be served now, and how?**
   ``CachedResponse.from_response(...)`` computes, once, what the cache needs
   to keep about a response (freshness lifetime §4.2.1/§4.2.2, the inputs of
   the age calculation §4.2.3, RFC 5861 stale windows, RFC 8246
   ``immutable``); ``assess(cached, now, request_headers)`` -> ``Verdict``:

   ==============================  ==========================================
   ``Freshness``                   what the shell does
   ==============================  ==========================================
   ``FRESH``                       serve it
   ``STALE_WHILE_REVALIDATE``      serve it, revalidate in the background
   ``STALE_IF_ERROR_ONLY``         revalidate first; if upstream fails (5xx,
                                   unreachable) serve it anyway
   ``STALE``                       revalidate first; on failure, an error
   ==============================  ==========================================

   plus ``Verdict.age_header``, the ``Age`` value to send (§5.1).

``CachedResponse`` holds plain values (``dataclasses.asdict`` round-trips), so
the store can persist it beside the body and assess it after a restart.
``strip_for_storage`` (§3.1) and ``update_stored_headers`` (§3.2, a 304
freshening a stored response, §4.3.4) handle the header sets.

Header inputs are a mapping or an iterable of (name, value) pairs; repeated
fields are joined with ", " (``legato.http.fold_headers``, RFC 9110 §5.3) and
Cache-Control is parsed by ``legato.http.parse_cache_control``.

Choices where the RFCs leave room (each a deliberate, documented decision):

* **Only GET responses are stored.**  HEAD shares GET's cache key and is
  answered from the stored GET response; a HEAD response has no body to
  store (§3: "the request method is understood by the cache").
* **206 and 304 are not stored** (§3.3, §3.4 allow it): a tier fetches whole
  objects and serves ranges from them (``legato.http.evaluate``); a 304
  freshens the stored response via ``update_stored_headers``.
* **Qualified ``private="x"`` and ``no-cache="x"`` are treated as their
  unqualified forms** (§5.2.2.4 and §5.2.2.7 explicitly allow this).
* **Heuristic freshness** (§4.2.2) only for heuristically cacheable statuses
  (RFC 9110 §15.1) or ``public``, only from ``Last-Modified``: 10% of
  ``Date - Last-Modified``, at most ``HEURISTIC_MAX`` (one day).  Without
  Last-Modified the lifetime is 0: stored, but validated before every use.
  Legato's origin always sends an explicit max-age, so this only matters for
  foreign upstreams.
* **s-maxage implies proxy-revalidate** (§5.2.2.10), and with
  ``must-revalidate``, ``proxy-revalidate`` and ``no-cache`` it forbids every
  stale answer, RFC 5861 windows included (§4.2.4: a cache MUST NOT serve
  stale if a directive prohibits it).  Origins that want stale-while-
  revalidate at the edge should say ``max-age``, as Legato's origin does.
* **Client request directives** (§5.2.1: the client "prefers") are governed
  by ``ClientDirectives``.  The default, ``MUTABLE_ONLY``, honours a
  client's ``no-cache``, ``max-age``, ``min-fresh``, ``max-stale`` and
  ``no-store`` for mutable responses (playlists, track.json, licences) but
  ignores them for ``immutable`` ones (segments, init): those cannot change,
  RFC 8246 asks clients not to revalidate them, and a browser reload (which
  sends ``max-age=0`` / ``no-cache``) must not turn every listener's segment
  fetch into an origin request.  ``IGNORE`` is what most CDNs do by default
  (no client can bust the cache at all); ``HONOUR`` is RFC 9111 to the
  letter.  ``only-if-cached`` and request ``stale-if-error`` are left to the
  shell.
* ``Pragma: no-cache`` is ignored (deprecated, RFC 9111 §5.4); ``Vary: *``
  makes a response non-storable (§4.1: it can never be selected).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from legato.http import (
    delta_seconds,
    fold_headers,
    parse_cache_control,
    parse_http_date,
)

__all__ = [
    "AGE_MAX",
    "HEURISTIC_FRACTION",
    "HEURISTIC_MAX",
    "CachedResponse",
    "ClientDirectives",
    "Freshness",
    "Storability",
    "Verdict",
    "age_header",
    "assess",
    "current_age",
    "freshness_lifetime",
    "storable",
    "strip_for_storage",
    "update_stored_headers",
]

Headers = Mapping[str, str] | Iterable[tuple[str, str]]
"""Header fields as a mapping or as (name, value) pairs (repeats allowed)."""

HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
"""RFC 9110 §15.1: statuses cacheable by default (heuristic freshness allowed)."""

STORABLE_METHODS = frozenset({"GET"})
"""See the module docstring: HEAD is answered from the stored GET response."""

HEURISTIC_FRACTION = 0.1
"""§4.2.2: "a typical setting of this fraction might be 10%"."""

HEURISTIC_MAX = 86_400.0
"""Upper bound of a heuristic freshness lifetime, seconds."""

AGE_MAX = 2_147_483_648
"""§1.2.2: delta-seconds that overflow are sent as 2^31."""

# §3.1: fields a cache does not store: Connection and the hop-by-hop fields
# (RFC 9110 §7.6.1), and the proxy-authentication fields.
_NOT_STORED = frozenset({
    "connection", "proxy-connection", "keep-alive", "te", "transfer-encoding", "upgrade",
    "proxy-authenticate", "proxy-authentication-info", "proxy-authorization",
})
# §3.2: fields a 304 must not overwrite in the stored response.
_NOT_UPDATED = _NOT_STORED | {"content-length"}

_RESPONSE_FIELDS = frozenset({"cache-control", "date", "expires", "age", "last-modified", "vary"})
_REQUEST_FIELDS = frozenset({"cache-control", "authorization"})


class Freshness(enum.Enum):
    """How a stored response may be used now (see the module docstring)."""

    FRESH = "fresh"
    STALE_WHILE_REVALIDATE = "stale-while-revalidate"
    STALE_IF_ERROR_ONLY = "stale-if-error"
    STALE = "stale"


class ClientDirectives(enum.Enum):
    """Which responses a client's request Cache-Control applies to."""

    IGNORE = "ignore"  # none: the CDN default; no client can bypass the cache
    MUTABLE_ONLY = "mutable-only"  # all but immutable responses (our default)
    HONOUR = "honour"  # all: RFC 9111 to the letter

    def applies(self, immutable: bool) -> bool:
        return self is ClientDirectives.HONOUR or (self is ClientDirectives.MUTABLE_ONLY and not immutable)


def _fold(headers: Headers, names: frozenset[str]) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return fold_headers(items, names)


def _first_member(value: str) -> str:
    """§5.1: a list-valued Age: use the first member."""
    return value.split(",", 1)[0].strip()


# --------------------------------------------------------------------------
# §3 Storing responses


@dataclass(frozen=True, slots=True)
class Storability:
    """Whether a response may be stored, and why not (a short reason for logs)."""

    storable: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.storable


_STORABLE = Storability(True)


def storable(
    method: str,
    status: int,
    response_headers: Headers,
    request_headers: Headers = (),
    *,
    client: ClientDirectives = ClientDirectives.MUTABLE_ONLY,
) -> Storability:
    """May a shared cache store this response to this request (§3)?"""
    response = _fold(response_headers, _RESPONSE_FIELDS)
    request = _fold(request_headers, _REQUEST_FIELDS)
    cc = parse_cache_control(response.get("cache-control", ""))
    if method not in STORABLE_METHODS:
        return Storability(False, f"method {method} is not stored")
    if status < 200 or status in (206, 304):
        return Storability(False, f"status {status} is not stored")  # §3: final only; 206/304: our choice
    understood = status in HEURISTICALLY_CACHEABLE or status in (302, 303, 307)
    if "must-understand" in cc and not understood:
        return Storability(False, "must-understand with a status we do not cache")  # §5.2.2.3
    if "no-store" in cc and "must-understand" not in cc:
        return Storability(False, "response no-store")  # §5.2.2.5 (§5.2.2.3 overrides it)
    if "private" in cc:
        return Storability(False, "response private")  # §5.2.2.7, qualified treated as unqualified
    if "authorization" in request and not ({"public", "must-revalidate", "s-maxage"} & cc.keys()):
        return Storability(False, "request has Authorization")  # §3.5
    if response.get("vary", "").strip() == "*":
        return Storability(False, "Vary: *")  # §4.1: never matches
    request_cc = parse_cache_control(request.get("cache-control", ""))
    if "no-store" in request_cc and client.applies("immutable" in cc):
        return Storability(False, "request no-store")  # §5.2.1.5
    explicit = bool({"public", "max-age", "s-maxage"} & cc.keys()) or "expires" in response
    if not explicit and status not in HEURISTICALLY_CACHEABLE:
        return Storability(False, f"status {status} needs explicit freshness")  # §3, last bullet
    return _STORABLE


def strip_for_storage(headers: Headers) -> list[tuple[str, str]]:
    """The header fields to store with a response (§3.1): no hop-by-hop fields."""
    items = list(headers.items() if isinstance(headers, Mapping) else headers)
    named = {n.strip().lower() for name, value in items if name.lower() == "connection" for n in value.split(",")}
    return [(n, v) for n, v in items if n.lower() not in _NOT_STORED and n.lower() not in named]


def update_stored_headers(stored: Headers, fresh: Headers) -> list[tuple[str, str]]:
    """The stored fields updated from a 304 (or HEAD) response (§3.2, §4.3.4).

    Each field of ``fresh`` replaces all stored lines of that name, except
    Content-Length and the fields never stored (§3.1).
    """
    new = [(n, v) for n, v in strip_for_storage(fresh) if n.lower() not in _NOT_UPDATED]
    replaced = {n.lower() for n, _ in new}
    return [(n, v) for n, v in strip_for_storage(stored) if n.lower() not in replaced] + new


# --------------------------------------------------------------------------
# §4.2 Freshness


def freshness_lifetime(
    status: int,
    response_headers: Headers,
    response_time: float,
    *,
    heuristic_fraction: float = HEURISTIC_FRACTION,
    heuristic_max: float = HEURISTIC_MAX,
) -> tuple[float, bool]:
    """(freshness lifetime in seconds, whether it is heuristic), for a shared cache.

    §4.2.1, first match wins: s-maxage, max-age, Expires - Date (Date
    defaults to ``response_time``, RFC 9110 §6.6.1), then the heuristic of
    §4.2.2.  An invalid s-maxage/max-age/Expires makes the response stale
    (lifetime 0) rather than falling through (§4.2.1 "encouraged to
    consider ... stale"; §5.3 invalid Expires is "in the past").
    """
    response = _fold(response_headers, _RESPONSE_FIELDS)
    cc = parse_cache_control(response.get("cache-control", ""))
    for directive in ("s-maxage", "max-age"):
        if directive in cc:
            seconds = delta_seconds(cc[directive])
            return (0.0 if seconds is None else float(seconds)), False
    date = _date(response, response_time)
    if "expires" in response:
        expires = parse_http_date(response["expires"], response_time)
        return (0.0 if expires is None else max(0.0, expires - date)), False
    if status not in HEURISTICALLY_CACHEABLE and "public" not in cc:
        return 0.0, False
    modified = parse_http_date(response.get("last-modified", ""), response_time)
    if modified is None:
        return 0.0, True
    return min(heuristic_max, max(0.0, (date - modified) * heuristic_fraction)), True


def _date(response: Mapping[str, str], response_time: float) -> float:
    """The Date value, or the time the response was received (RFC 9110 §6.6.1)."""
    value = response.get("date")
    parsed = parse_http_date(value, response_time) if value is not None else None
    return response_time if parsed is None else float(parsed)


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """What a cache keeps about a stored response to decide its freshness.

    Times are Unix seconds.  ``request_time``/``response_time`` are when the
    request that produced it was sent and its response received (§4.2.3).
    """

    status: int
    date: float  # Date, or response_time when absent/invalid
    age: float  # the Age field received (0 if absent/invalid), §5.1
    request_time: float
    response_time: float
    lifetime: float  # freshness lifetime, §4.2.1
    heuristic: bool = False  # lifetime came from §4.2.2
    immutable: bool = False  # RFC 8246
    stale_while_revalidate: float = 0.0  # RFC 5861 §3, seconds
    stale_if_error: float = 0.0  # RFC 5861 §4, seconds
    says_stale_if_error: bool = False  # the response carried stale-if-error (else a cache may choose its own)
    no_cache: bool = False  # §5.2.2.4: validate before every use
    no_stale: bool = False  # must-revalidate, proxy-revalidate or s-maxage: never serve stale

    @classmethod
    def from_response(
        cls,
        status: int,
        response_headers: Headers,
        request_time: float,
        response_time: float,
        *,
        heuristic_fraction: float = HEURISTIC_FRACTION,
        heuristic_max: float = HEURISTIC_MAX,
    ) -> CachedResponse:
        """Extract the freshness facts of a response received at ``response_time``."""
        pairs = list(response_headers.items() if isinstance(response_headers, Mapping) else response_headers)
        response = _fold(pairs, _RESPONSE_FIELDS)
        cc = parse_cache_control(response.get("cache-control", ""))
        lifetime, heuristic = freshness_lifetime(
            status, pairs, response_time, heuristic_fraction=heuristic_fraction, heuristic_max=heuristic_max
        )
        age = delta_seconds(_first_member(response["age"])) if "age" in response else None
        stale_if_error = delta_seconds(cc.get("stale-if-error"))
        return cls(
            status=status,
            date=_date(response, response_time),
            age=float(age or 0),
            request_time=request_time,
            response_time=response_time,
            lifetime=lifetime,
            heuristic=heuristic,
            immutable="immutable" in cc,
            stale_while_revalidate=float(delta_seconds(cc.get("stale-while-revalidate")) or 0),
            stale_if_error=float(stale_if_error or 0),
            says_stale_if_error=stale_if_error is not None,
            no_cache="no-cache" in cc,
            no_stale=bool({"must-revalidate", "proxy-revalidate", "s-maxage"} & cc.keys()),
        )


def current_age(cached: CachedResponse, now: float) -> float:
    """The response's current age in seconds (§4.2.3), never negative."""
    apparent_age = max(0.0, cached.response_time - cached.date)
    response_delay = max(0.0, cached.response_time - cached.request_time)
    corrected_age_value = cached.age + response_delay
    corrected_initial_age = max(apparent_age, corrected_age_value)
    resident_time = max(0.0, now - cached.response_time)
    return corrected_initial_age + resident_time


def age_header(age: float) -> str:
    """The Age field value for a current age (§5.1): whole seconds, at most 2^31."""
    if math.isnan(age) or age <= 0:
        return "0"
    return str(min(int(age), AGE_MAX))


class Verdict(NamedTuple):
    """How a stored response may be used at one moment, and why.

    A named tuple rather than a frozen dataclass: one is made per cache hit,
    and a frozen dataclass's ``__init__`` costs three times as much.
    """

    freshness: Freshness
    age: float  # current age, seconds
    ttl: float  # freshness lifetime left, seconds (negative once stale)
    reason: str

    @property
    def age_header(self) -> str:
        """The Age value to send with the stored response (§5.1)."""
        return age_header(self.age)

    @property
    def usable_now(self) -> bool:
        """Whether it may be sent without waiting for upstream."""
        return self.freshness in (Freshness.FRESH, Freshness.STALE_WHILE_REVALIDATE)


def assess(
    cached: CachedResponse,
    now: float,
    request_headers: Headers = (),
    *,
    client: ClientDirectives = ClientDirectives.MUTABLE_ONLY,
) -> Verdict:
    """Decide whether ``cached`` may answer a request at ``now`` (§4, §4.2.4, RFC 5861, RFC 8246)."""
    age = current_age(cached, now)
    ttl = cached.lifetime - age
    if cached.no_cache:
        return Verdict(Freshness.STALE, age, ttl, "response no-cache: validate every use")  # §5.2.2.4
    fresh, must_validate, reason = ttl > 0, False, "fresh" if ttl > 0 else "stale"
    if client.applies(cached.immutable):
        request = _fold(request_headers, _REQUEST_FIELDS)
        rcc = parse_cache_control(request.get("cache-control", ""))
        fresh, must_validate, reason = _client(rcc, age, ttl, fresh, reason)
        if not fresh and not must_validate and "max-stale" in rcc and not cached.no_stale:
            limit = delta_seconds(rcc["max-stale"])  # §5.2.1.2: no value = any staleness
            if rcc["max-stale"] is None or (limit is not None and -ttl <= limit):
                return Verdict(Freshness.STALE_WHILE_REVALIDATE, age, ttl, "client accepts stale (max-stale)")
    if fresh:
        return Verdict(Freshness.FRESH, age, ttl, reason)
    if ttl > 0:  # still fresh, but the client asked for validation
        return Verdict(Freshness.STALE_IF_ERROR_ONLY, age, ttl, f"{reason}; still fresh if upstream fails")
    if cached.no_stale:
        return Verdict(Freshness.STALE, age, ttl, f"{reason}; must revalidate (must-revalidate/s-maxage)")
    staleness = -ttl
    if not must_validate and staleness < cached.stale_while_revalidate:
        return Verdict(Freshness.STALE_WHILE_REVALIDATE, age, ttl, f"{reason}; within stale-while-revalidate")
    if staleness < cached.stale_if_error:
        return Verdict(Freshness.STALE_IF_ERROR_ONLY, age, ttl, f"{reason}; within stale-if-error")
    return Verdict(Freshness.STALE, age, ttl, reason)


def _client(
    rcc: Mapping[str, str | None], age: float, ttl: float, fresh: bool, reason: str
) -> tuple[bool, bool, str]:
    """Apply a client's no-cache, max-age and min-fresh (§5.2.1): (fresh, must_validate, reason)."""
    if "no-cache" in rcc:
        return False, True, "client no-cache"  # §5.2.1.4
    if "max-age" in rcc:
        limit = delta_seconds(rcc["max-age"])
        if limit is None or age > limit:
            return False, True, f"client max-age={rcc['max-age']}"  # §5.2.1.1
    if "min-fresh" in rcc:
        limit = delta_seconds(rcc["min-fresh"])
        if limit is None or ttl < limit:
            return False, True, f"client min-fresh={rcc['min-fresh']}"  # §5.2.1.3
    return fresh, False, reason
