"""HTTP semantics shared by every tier, as pure functions over values.

Range requests, conditional requests, Cache-Control, HTTP dates, content types
and CORS live here, once, with the RFC section each rule comes from.  Nothing in
this module touches a socket, a file or a clock: callers pass the
representation's metadata (``Validators``: size, ETag, Last-Modified), the
request's header values and ``now``, and get back a ``Decision`` saying which
status to answer and which byte range to send.  The origin feeds it file
metadata; the cache tiers will feed it cached objects' metadata, so a 304 or a
206 from an edge is decided by exactly the same code as one from the origin.

References: RFC 9110 (HTTP Semantics), RFC 9111 (HTTP Caching), the WHATWG
Fetch standard (CORS).

Choices where the RFCs leave room (all RFC 9110 §14.2 "MAY ignore or reject"):

* A ``Range`` with a unit other than ``bytes`` is ignored (200), as §14.2
  requires.
* A syntactically invalid ``bytes`` range (``bytes=abc``, ``bytes=5-2``,
  ``bytes=``) is *rejected* with 416 and a reason rather than ignored: a
  player that sends one is broken, and a silent 200 of a whole FLAC segment
  hides the bug.
* More than one range (``bytes=0-1,5-9``) is rejected with 416 and the reason
  "multiple ranges not supported": no HLS/DASH player asks for
  ``multipart/byteranges`` and serving it multiplies work per request.
* ``Range`` is only honoured for GET (§14.2: "GET is the only method for which
  range handling is defined"); HEAD gets the 200 headers.
"""

from __future__ import annotations

import calendar
import enum
import functools
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from legato.urls import Kind

# --------------------------------------------------------------------------
# Content types (RFC 8216 §4 for HLS, ISO/IEC 23009-1 Annex C for DASH,
# RFC 4337 for MP4 audio, RFC 8259 §11 for JSON: no charset parameter)

CONTENT_TYPES: Mapping[Kind, str] = {
    Kind.MASTER: "application/vnd.apple.mpegurl",
    Kind.MEDIA_PLAYLIST: "application/vnd.apple.mpegurl",
    Kind.MPD: "application/dash+xml",
    Kind.INIT: "audio/mp4",
    Kind.SEGMENT: "audio/mp4",
    Kind.TRACK_JSON: "application/json",
    Kind.LICENSE: "application/json",
    Kind.KEY: "application/octet-stream",
    Kind.CLEARKEY: "application/json",
    Kind.HEALTHZ: "application/json",
    Kind.METRICS: "text/plain; version=0.0.4; charset=utf-8",
}


def content_type(kind: Kind) -> str:
    """The Content-Type for an object of ``kind``."""
    return CONTENT_TYPES[kind]


# --------------------------------------------------------------------------
# Request header folding (RFC 9110 §5.3)

CONDITIONAL_HEADERS = frozenset(
    {"range", "if-range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since"}
)


def fold_headers(items: Iterable[tuple[str, str]], names: frozenset[str] = CONDITIONAL_HEADERS) -> dict[str, str]:
    """Lower-cased ``names`` -> value, repeated fields joined with ", ".

    RFC 9110 §5.3: a recipient MAY combine field lines of the same name into
    one comma-separated value.  Doing it here means a request with two
    ``Range`` lines is seen as a (multi-)range list, never as its first line.
    """
    out: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        if key in names:
            out[key] = f"{out[key]}, {value}" if key in out else value
    return out


# --------------------------------------------------------------------------
# HTTP dates (RFC 9110 §5.6.7) and Last-Modified (§8.8.2)

_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {name: i for i, name in enumerate(_MONTH_NAMES, start=1)}
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_IMF_FIXDATE = re.compile(r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d\d) ([A-Z][a-z]{2}) (\d{4}) (\d\d):(\d\d):(\d\d) GMT")
_RFC850_DATE = re.compile(
    r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), (\d\d)-([A-Z][a-z]{2})-(\d\d) (\d\d):(\d\d):(\d\d) GMT"
)
_ASCTIME_DATE = re.compile(r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ([A-Z][a-z]{2}) ([ \d]\d) (\d\d):(\d\d):(\d\d) (\d{4})")


@functools.lru_cache(maxsize=4096)
def _http_date(seconds: int) -> str:
    t = time.gmtime(seconds)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTH_NAMES[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


def http_date(timestamp: float) -> str:
    """Format a Unix time as an IMF-fixdate, the only format senders use (§5.6.7).

    Memoised: Last-Modified values repeat for every request of a file.
    """
    return _http_date(int(timestamp))


def parse_http_date(value: str, now: float) -> int | None:
    """Parse an HTTP-date in any of the three formats of §5.6.7; None if invalid.

    ``now`` resolves rfc850's two-digit years: one that would be more than 50
    years in the future means the most recent past year with those digits.
    """
    value = value.strip()
    if m := _IMF_FIXDATE.fullmatch(value):
        day, mon, year, hh, mm, ss = m.groups()
    elif m := _ASCTIME_DATE.fullmatch(value):
        mon, day, hh, mm, ss, year = m.groups()
    elif m := _RFC850_DATE.fullmatch(value):
        day, mon, yy, hh, mm, ss = m.groups()
        this_year = time.gmtime(now).tm_year
        year_int = this_year - this_year % 100 + int(yy)
        if year_int > this_year + 50:
            year_int -= 100
        year = str(year_int)
    else:
        return None
    if mon not in _MONTHS:
        return None
    fields = (int(year), _MONTHS[mon], int(day), int(hh), int(mm), int(ss))
    if not (1 <= fields[2] <= 31 and fields[3] < 24 and fields[4] < 60 and fields[5] < 61):
        return None
    return calendar.timegm(fields + (0, 0, 0))


def last_modified(mtime: float, now: float) -> int:
    """The Last-Modified to send for a file modified at ``mtime``.

    §8.8.2.1: an origin server MUST NOT send a Last-Modified later than the
    message's Date; a modification time in the future is replaced by now.
    Whole seconds, the resolution of HTTP-date.
    """
    return int(min(mtime, now))


def last_modified_is_strong(last_modified: int, date: float) -> bool:
    """Whether a Last-Modified can act as a strong validator (§8.8.2.2).

    True when the representation was last changed at least one second before
    ``date`` (the origin's now, or a cache entry's Date), so it cannot have
    changed twice within the second the date names.
    """
    return date - last_modified >= 1


# --------------------------------------------------------------------------
# Entity tags (RFC 9110 §8.8.3)

_ETAG_ITEM = re.compile(r'[ \t]*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"[ \t]*')


@dataclass(frozen=True, slots=True)
class EntityTag:
    opaque: str
    weak: bool = False

    def __str__(self) -> str:
        return f'{"W/" if self.weak else ""}"{self.opaque}"'


def strong_etag(opaque: str) -> str:
    """A strong ETag field value for an opaque tag (hash hex digest, say)."""
    return str(EntityTag(opaque))


def parse_etag(value: str) -> EntityTag | None:
    """One entity-tag (an ETag field value); None if malformed."""
    m = _ETAG_ITEM.fullmatch(value)
    return EntityTag(m.group(2), bool(m.group(1))) if m else None


def parse_etag_list(value: str) -> tuple[EntityTag, ...] | None:
    """An If-Match / If-None-Match value: None means ``*``.

    ``#entity-tag`` list syntax (§5.6.1), empty elements allowed.  A malformed
    list yields the tags before the junk only; it then matches less, so a
    garbled If-Match fails safe (412) and a garbled If-None-Match sends a 200.
    """
    if value.strip() == "*":
        return None
    tags = []
    pos = 0
    while pos < len(value):
        m = _ETAG_ITEM.match(value, pos)
        if m:
            tags.append(EntityTag(m.group(2), bool(m.group(1))))
            pos = m.end()
        else:
            # allow empty list elements (", ,") and the whitespace around them
            while pos < len(value) and value[pos] in " \t":
                pos += 1
        if pos < len(value):
            if value[pos] != ",":
                break
            pos += 1
    return tuple(tags)


def strong_match(a: EntityTag, b: EntityTag) -> bool:
    """§8.8.3.2 strong comparison: both strong and identical."""
    return not a.weak and not b.weak and a.opaque == b.opaque


def weak_match(a: EntityTag, b: EntityTag) -> bool:
    """§8.8.3.2 weak comparison: identical opaque-tags, weakness ignored."""
    return a.opaque == b.opaque


# --------------------------------------------------------------------------
# Byte ranges (RFC 9110 §14)

_DIGITS_LIMIT = 18  # more digits than this cannot address any real file
_HUGE = 1 << 62  # what an over-long number stands for: beyond every size
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BYTE_RANGE_SPEC = re.compile(r"([0-9]+)-([0-9]*)|-([0-9]+)")


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive byte range ``first..last`` of a representation (§14.1.2)."""

    first: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def content_range(self, size: int) -> str:
        """The Content-Range value of a 206 (§14.4)."""
        return f"bytes {self.first}-{self.last}/{size}"


def unsatisfied_content_range(size: int) -> str:
    """The Content-Range value of a 416 (§14.4, §15.5.17)."""
    return f"bytes */{size}"


class RangeOutcome(enum.Enum):
    """What a Range header asks of a representation."""

    FULL = "full"  # no Range, or one to ignore: send the whole representation
    PARTIAL = "partial"  # one satisfiable range: 206
    UNSATISFIABLE = "unsatisfiable"  # well formed but past the end: 416
    MALFORMED = "malformed"  # not a valid bytes range-set: 416 (our choice)
    MULTIPLE = "multiple"  # several ranges: 416 (our choice)


@dataclass(frozen=True, slots=True)
class RangeDecision:
    outcome: RangeOutcome
    range: ByteRange | None = None
    reason: str = ""


_FULL = RangeDecision(RangeOutcome.FULL)


def _number(digits: str) -> int:
    """Parse a run of digits; absurdly long numbers become ``_HUGE``.

    Guards against both 64-bit overflow downstream and Python's refusal to
    convert strings of more than 4300 digits.
    """
    digits = digits.lstrip("0") or "0"
    return _HUGE if len(digits) > _DIGITS_LIMIT else int(digits)


def parse_range(value: str | None, size: int) -> RangeDecision:
    """Decide what a ``Range`` field value means for a representation of ``size`` bytes.

    §14.1.1 ranges-specifier = range-unit "=" range-set; §14.1.2 byte ranges.
    """
    if value is None:
        return _FULL
    unit, eq, range_set = value.partition("=")
    unit = unit.strip()
    if not eq or not _TOKEN.fullmatch(unit):
        return RangeDecision(RangeOutcome.MALFORMED, reason="Range is not unit=ranges")
    if unit.lower() != "bytes":  # §14.1: units are case-insensitive
        return _FULL  # §14.2: MUST ignore a range unit it does not understand
    specs = [s.strip(" \t") for s in range_set.split(",")]
    specs = [s for s in specs if s]  # §5.6.1: empty list elements are allowed
    if not specs:
        return RangeDecision(RangeOutcome.MALFORMED, reason="Range has no byte range")
    if len(specs) > 1:
        return RangeDecision(RangeOutcome.MULTIPLE, reason="multiple ranges not supported; ask for one")
    m = _BYTE_RANGE_SPEC.fullmatch(specs[0])
    if not m:
        return RangeDecision(RangeOutcome.MALFORMED, reason=f"invalid byte range {specs[0][:40]!r}")
    first_s, last_s, suffix_s = m.groups()
    if suffix_s is not None:
        # §14.1.2 suffix-range: the last N bytes; N = 0 is unsatisfiable
        suffix = _number(suffix_s)
        if suffix == 0:
            return RangeDecision(RangeOutcome.UNSATISFIABLE, reason="zero-length suffix range")
        if size == 0:
            # §14.1.1: on an empty representation only a non-zero suffix range
            # is satisfiable, and it selects nothing: send the (empty) whole.
            return _FULL
        return RangeDecision(RangeOutcome.PARTIAL, ByteRange(max(0, size - suffix), size - 1))
    first = _number(first_s)
    last = _number(last_s) if last_s else None
    if last is not None and last < first:
        # §14.1.1: a range with last-pos < first-pos is invalid
        return RangeDecision(RangeOutcome.MALFORMED, reason="byte range ends before it starts")
    if first >= size:
        # §14.1.1: satisfiable only if first-pos < length
        return RangeDecision(RangeOutcome.UNSATISFIABLE, reason=f"range starts at or after the end ({size} bytes)")
    # §14.1.2: a last-pos at or past the end means "to the end"
    end = size - 1 if last is None else min(last, size - 1)
    return RangeDecision(RangeOutcome.PARTIAL, ByteRange(first, end))


# --------------------------------------------------------------------------
# Conditional requests (RFC 9110 §13)


@dataclass(frozen=True, slots=True)
class Validators:
    """What a tier knows about the selected representation."""

    size: int
    etag: str | None = None  # the ETag field value, e.g. '"9f3a..."'
    last_modified: int | None = None  # Unix seconds, as sent in Last-Modified
    last_modified_strong: bool = False  # see last_modified_is_strong()


@dataclass(frozen=True, slots=True)
class Decision:
    """The status to answer and, for a 206, which bytes to send."""

    status: int  # 200, 206, 304, 412 or 416
    range: ByteRange | None = None
    reason: str = ""


def _if_match(value: str, current: EntityTag | None) -> bool:
    """§13.1.1: true for ``*`` when a representation exists, else any strong match."""
    tags = parse_etag_list(value)
    if tags is None:
        return True  # we only evaluate preconditions on existing representations
    return current is not None and any(strong_match(t, current) for t in tags)


def _if_none_match(value: str, current: EntityTag | None) -> bool:
    """§13.1.2: false for ``*`` when a representation exists, or on any weak match."""
    tags = parse_etag_list(value)
    if tags is None:
        return False
    return current is None or not any(weak_match(t, current) for t in tags)


def _if_range(value: str, v: Validators, now: float) -> bool:
    """§13.1.5: a strong ETag match, or an exact match of a strong Last-Modified."""
    value = value.strip()
    if value.startswith(("W/", '"')):
        tag = parse_etag(value)
        current = parse_etag(v.etag) if v.etag else None
        return tag is not None and current is not None and strong_match(tag, current)
    date = parse_http_date(value, now)
    return date is not None and date == v.last_modified and v.last_modified_strong


def evaluate(method: str, headers: Mapping[str, str], v: Validators, now: float) -> Decision:
    """Evaluate a request's preconditions and Range against a representation.

    ``headers`` maps lower-case names to (folded) values, see fold_headers().
    Call it only for a representation that exists: §13.2.1 says preconditions
    are ignored when the response would otherwise not be 2xx or 412.  The
    order is §13.2.2's:

    1. If-Match, when present; false -> 412.
    2. Else If-Unmodified-Since; false -> 412.
    3. If-None-Match, when present; false -> 304 for GET/HEAD, else 412.
    4. Else If-Modified-Since (GET/HEAD only); false -> 304.
    5. For GET with Range: If-Range, when present, must hold or Range is
       ignored; then the range decides 206 or 416.
    """
    current = parse_etag(v.etag) if v.etag else None
    safe = method in ("GET", "HEAD")

    # Steps 1-2. §13.1.4: If-Unmodified-Since is ignored when If-Match is
    # present, when not a valid date, and when there is no modification date.
    if (value := headers.get("if-match")) is not None:
        if not _if_match(value, current):
            return Decision(412, reason="If-Match: no current entity tag matches")
    elif (value := headers.get("if-unmodified-since")) is not None and v.last_modified is not None:
        date = parse_http_date(value, now)
        if date is not None and v.last_modified > date:
            return Decision(412, reason="If-Unmodified-Since: modified since")

    # Steps 3-4. §13.1.3: If-Modified-Since is ignored when If-None-Match is
    # present, for methods other than GET and HEAD, and when not a valid date.
    if (value := headers.get("if-none-match")) is not None:
        if not _if_none_match(value, current):
            return Decision(304) if safe else Decision(412, reason="If-None-Match: entity tag matches")
    elif safe and (value := headers.get("if-modified-since")) is not None and v.last_modified is not None:
        date = parse_http_date(value, now)
        if date is not None and v.last_modified <= date:
            return Decision(304)

    # Step 5. §14.2: Range is defined for GET only; §13.1.5: If-Range is
    # ignored without Range, and a false If-Range means "send it all".
    range_value = headers.get("range")
    if method != "GET" or range_value is None:
        return Decision(200)
    if (value := headers.get("if-range")) is not None and not _if_range(value, v, now):
        return Decision(200)
    rd = parse_range(range_value, v.size)
    if rd.outcome is RangeOutcome.PARTIAL:
        return Decision(206, rd.range)
    if rd.outcome is RangeOutcome.FULL:
        return Decision(200)
    return Decision(416, reason=rd.reason)


# --------------------------------------------------------------------------
# Cache-Control (RFC 9111 §5.2)

_LIST_MEMBER = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*"?)+')  # commas inside quotes do not split
_QUOTED_PAIR = re.compile(r"\\(.)")
_DIRECTIVE = re.compile(r'[ \t]*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)(?:[ \t]*=[ \t]*(?:"((?:[^"\\]|\\.)*)"|([!#$%&\'*+.^_`|~0-9A-Za-z-]*)))?[ \t]*')
DELTA_SECONDS_MAX = 2_147_483_648  # RFC 9111 §1.2.2: cap for overflowing delta-seconds


def cache_control(
    *,
    public: bool = False,
    private: bool = False,
    no_cache: bool = False,
    no_store: bool = False,
    max_age: int | None = None,
    s_maxage: int | None = None,
    must_revalidate: bool = False,
    immutable: bool = False,
) -> str:
    """Build a Cache-Control response value (RFC 9111 §5.2.2; immutable: RFC 8246)."""
    parts = []
    for flag, name in ((public, "public"), (private, "private"), (no_cache, "no-cache"), (no_store, "no-store")):
        if flag:
            parts.append(name)
    for seconds, name in ((max_age, "max-age"), (s_maxage, "s-maxage")):
        if seconds is not None:
            if seconds < 0:
                raise ValueError(f"{name} must be >= 0, got {seconds}")
            parts.append(f"{name}={seconds}")
    if must_revalidate:
        parts.append("must-revalidate")
    if immutable:
        parts.append("immutable")
    return ", ".join(parts)


def parse_cache_control(value: str) -> dict[str, str | None]:
    """Parse Cache-Control into {directive: argument or None}.

    §5.2: directive names are case-insensitive; arguments are a token or a
    quoted-string (unquoted here).  A repeated directive keeps its first value;
    unparseable list members are skipped.
    """
    out: dict[str, str | None] = {}
    for member in _LIST_MEMBER.findall(value):
        m = _DIRECTIVE.fullmatch(member)
        if m is None:
            continue
        name, quoted, token = m.groups()
        arg = _QUOTED_PAIR.sub(r"\1", quoted) if quoted is not None else token
        out.setdefault(name.lower(), arg)
    return out


def delta_seconds(arg: str | None) -> int | None:
    """A delta-seconds argument (RFC 9111 §1.2.2): None if invalid, capped at 2^31."""
    if arg is None or not arg.isascii() or not arg.isdigit():
        return None
    return min(_number(arg), DELTA_SECONDS_MAX)


# --------------------------------------------------------------------------
# CORS (WHATWG Fetch §3.2 "CORS protocol")

CORS_ALLOWED_METHODS = ("GET", "HEAD", "OPTIONS")
CORS_ALLOWED_HEADERS = ("Range", "If-Range", "If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since")
CORS_EXPOSED_HEADERS = ("Content-Range", "Content-Length", "ETag", "Age", "Accept-Ranges", "Date")
CORS_MAX_AGE = 86_400


def cors_headers(allowed_origins: tuple[str, ...], origin: str | None) -> dict[str, str]:
    """Access-Control-* headers for a simple (non-preflight) response.

    With ``*`` or a single allowed origin the value is the same for every
    request, so no Vary is needed.  With several, the matching request Origin
    is reflected and ``Vary: Origin`` tells caches the response depends on it
    (RFC 9110 §12.5.5); a non-matching Origin gets no CORS headers.
    """
    headers = {"Access-Control-Expose-Headers": ", ".join(CORS_EXPOSED_HEADERS)}
    if len(allowed_origins) == 1:
        headers["Access-Control-Allow-Origin"] = allowed_origins[0]
        return headers
    if not allowed_origins:
        return {}
    if origin is not None and origin in allowed_origins:
        headers["Access-Control-Allow-Origin"] = origin
    else:
        headers = {}
    headers["Vary"] = "Origin"
    return headers


def preflight_headers(allowed_origins: tuple[str, ...], origin: str | None) -> dict[str, str]:
    """Headers answering a CORS preflight (OPTIONS with Access-Control-Request-Method)."""
    headers = cors_headers(allowed_origins, origin)
    if "Access-Control-Allow-Origin" in headers:
        headers.pop("Access-Control-Expose-Headers")
        headers["Access-Control-Allow-Methods"] = ", ".join(CORS_ALLOWED_METHODS)
        headers["Access-Control-Allow-Headers"] = ", ".join(CORS_ALLOWED_HEADERS)
        headers["Access-Control-Max-Age"] = str(CORS_MAX_AGE)
    return headers


def parse_origins(value: str) -> tuple[str, ...]:
    """A config value of allowed origins: ``*``, one origin, or a comma/space list."""
    origins = tuple(o for o in re.split(r"[,\s]+", value.strip()) if o)
    if "*" in origins and len(origins) > 1:
        raise ValueError("'*' cannot be combined with other origins")
    return origins
