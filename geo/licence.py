"""Licence records and the licensing decision.

A track's licence record lives in the store at ``licenses/{track}.json``
(served by origin like any object, cached by the tiers for origin's
``license_max_age``).  It is a list of **terms**, each granting the track in
some territories for a window of time under a revenue model, plus what to
offer instead where it is not licensed::

    {
      "track": "sunrise",
      "terms": [
        {"allow": ["GB", "IE"], "deny": [], "model": "subscription",
         "not_before": "2024-01-01T00:00:00Z", "not_after": null},
        {"allow": ["WW"], "deny": ["SE", "GB", "IE"], "model": "ad-supported"}
      ],
      "replacements": {"SE": "sunrise-radio-edit"},
      "country_field": "country",
      "refuse_anonymous": false
    }

* ``allow``: ISO 3166-1 alpha-2 codes, or ``WW`` for the whole world;
  ``deny`` removes codes from it (so "everywhere but SE" is
  ``allow ["WW"], deny ["SE"]``);
* ``not_before`` / ``not_after``: UTC instants in ISO 8601 with a zone
  (``Z`` or ``+00:00``), either may be null; a term is open for
  ``not_before <= now < not_after``;
* two terms may not cover the same territory over overlapping windows (which
  model would apply?); an inverted or empty window is an error;
* ``replacements``: country -> track id offered to listeners refused there;
* ``country_field``: which MaxMind country decides: ``country`` (where the
  address is), ``registered_country`` (where its network is registered) or
  ``represented_country`` (for whom it operates, e.g. a military base);
  null takes the node's default;
* ``refuse_anonymous``: refuse addresses an anonymous-IP database flags.

``decide(licence, country, now, policy, anonymous=...)`` -> ``Decision``,
checked in this order: window ("window not open" / "window closed" when no
term covering anyone is open), "anonymous proxy", "unknown territory" (the
address has no country: refused unless the policy allows unknown), then
"not licensed in territory", or a window reason when terms covering that
country exist but none is open now.

``Licence.from_json`` validates everything and raises ``LicenceError``
naming the field; nothing half-valid is ever returned.  Pure: no I/O, the
clock is an argument.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from legato.urls import is_track_id

WORLD = "WW"
MAX_RECORD_BYTES = 256 * 1024
DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
MODEL_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
FIELDS = ("country", "registered_country", "represented_country")

# ISO 3166-1 alpha-2, every officially assigned code (249), plus XK (Kosovo:
# user-assigned, but MaxMind and GeoNames use it).
_ISO_CODES = """
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY
BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK
FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR
IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK
ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF
TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW XK
"""
ISO_CODES = frozenset(_ISO_CODES.split())

# Refusal reasons (the 451 body's "reason" and the metrics label).
NOT_LICENSED = "not licensed in territory"
WINDOW_NOT_OPEN = "window not open"
WINDOW_CLOSED = "window closed"
UNKNOWN_TERRITORY = "unknown territory"
ANONYMOUS_PROXY = "anonymous proxy"
LICENSED = "licensed"


class LicenceError(ValueError):
    """A licence record that cannot be used; ``reason`` says what and where."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_codes(items: Iterable[str], where: str, *, world: bool = True) -> frozenset[str]:
    """Territory codes (upper-cased, checked); ``WW`` only where ``world``."""
    out = set()
    for item in items:
        if not isinstance(item, str):
            raise LicenceError(f"{where}: {item!r} is not a territory code")
        code = item.strip().upper()
        if code == WORLD and world:
            out.add(code)
        elif code not in ISO_CODES:
            hint = "ISO 3166-1 alpha-2" + (" or WW" if world else "")
            raise LicenceError(f"{where}: {item!r} is not a territory code ({hint}, e.g. GB, DE, US)")
        else:
            out.add(code)
    return frozenset(out)


def parse_instant(value: Any, where: str) -> float | None:
    """ISO 8601 with a zone (or a bare date: 00:00 UTC) -> POSIX seconds; None/"" -> None."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise LicenceError(f"{where}: {value!r} is not an ISO 8601 time")
    text = value.strip()
    if DATE_RE.fullmatch(text):  # a bare date is that day's start in UTC
        text += "T00:00:00Z"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise LicenceError(f"{where}: {value!r} is not an ISO 8601 time (e.g. 2025-01-31T00:00:00Z)") from None
    if when.tzinfo is None:
        raise LicenceError(f"{where}: {value!r} has no time zone; write it in UTC with Z, "
                           "e.g. 2025-01-31T00:00:00Z")
    return when.timestamp()


def format_instant(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Term:
    """Territories + window + model: one grant of a licence."""

    allow: frozenset[str]
    deny: frozenset[str] = frozenset()
    not_before: float | None = None
    not_after: float | None = None
    model: str = "subscription"

    def covers(self, country: str) -> bool:
        return country not in self.deny and (WORLD in self.allow or country in self.allow)

    def territories(self) -> frozenset[str]:
        """The codes this term covers (WW expanded to every code)."""
        return (ISO_CODES if WORLD in self.allow else self.allow) - self.deny

    def state(self, now: float) -> str:
        """'open', 'not open' or 'closed' at ``now``."""
        if self.not_before is not None and now < self.not_before:
            return "not open"
        if self.not_after is not None and now >= self.not_after:
            return "closed"
        return "open"

    def overlaps_in_time(self, other: Term) -> bool:
        lo = max(self.not_before or float("-inf"), other.not_before or float("-inf"))
        hi = min(self.not_after or float("inf"), other.not_after or float("inf"))
        return lo < hi

    def check(self, where: str) -> None:
        if not self.allow:
            raise LicenceError(f"{where}.allow: no territory (use WW for the whole world)")
        both = (self.allow & self.deny) - {WORLD}
        if both:
            raise LicenceError(f"{where}: {', '.join(sorted(both))} both allowed and denied")
        if not self.territories():
            raise LicenceError(f"{where}: deny removes every allowed territory")
        if self.not_before is not None and self.not_after is not None and self.not_before >= self.not_after:
            raise LicenceError(f"{where}: window is inverted or empty (not_before {format_instant(self.not_before)} "
                               f"is not before not_after {format_instant(self.not_after)})")
        if not MODEL_RE.fullmatch(self.model):
            raise LicenceError(f"{where}.model: {self.model!r} is not a label (lowercase letters, digits, - _)")

    def to_dict(self) -> dict[str, Any]:
        return {"allow": sorted(self.allow), "deny": sorted(self.deny), "model": self.model,
                "not_before": format_instant(self.not_before), "not_after": format_instant(self.not_after)}


def overlap(a: Term, b: Term) -> frozenset[str]:
    """Territories two terms both cover over overlapping windows (empty: no conflict)."""
    if not a.overlaps_in_time(b):
        return frozenset()
    return a.territories() & b.territories()


@dataclass(frozen=True)
class Licence:
    """A validated licence record."""

    track: str
    terms: tuple[Term, ...]
    replacements: Mapping[str, str] = field(default_factory=dict)
    country_field: str | None = None
    refuse_anonymous: bool = False

    def __post_init__(self) -> None:
        if not is_track_id(self.track):
            raise LicenceError(f"track: {self.track!r} is not a track id")
        if not self.terms:
            raise LicenceError("terms: a licence needs at least one term")
        for i, term in enumerate(self.terms):
            term.check(f"terms[{i}]")
        for i, a in enumerate(self.terms):
            for j in range(i + 1, len(self.terms)):
                common = overlap(a, self.terms[j])
                if common:
                    raise LicenceError(f"terms[{i}] and terms[{j}] overlap: both cover "
                                       f"{_short(common)} over overlapping windows")
        for code, other in self.replacements.items():
            if code not in ISO_CODES:
                raise LicenceError(f"replacements: {code!r} is not an ISO 3166-1 alpha-2 code")
            if not isinstance(other, str) or not is_track_id(other) or other == self.track:
                raise LicenceError(f"replacements.{code}: {other!r} is not another track's id")
        if self.country_field is not None and self.country_field not in FIELDS:
            raise LicenceError(f"country_field: {self.country_field!r} is not one of {', '.join(FIELDS)}")

    @classmethod
    def from_json(cls, data: bytes | str, track: str | None = None) -> Licence:
        """Parse and validate a record; ``track`` (when given) must match the record's own."""
        if len(data) > MAX_RECORD_BYTES:
            raise LicenceError(f"record is {len(data)} bytes, over {MAX_RECORD_BYTES}")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise LicenceError(f"not valid JSON: {exc}") from None
        licence = cls.from_dict(doc)
        if track is not None and licence.track != track:
            raise LicenceError(f"track: record is for {licence.track!r}, not {track!r}")
        return licence

    @classmethod
    def from_dict(cls, doc: Any) -> Licence:
        if not isinstance(doc, dict):
            raise LicenceError("record must be a JSON object")
        _known(doc, ("track", "terms", "replacements", "country_field", "refuse_anonymous"), "record")
        terms_doc = doc.get("terms")
        if not isinstance(terms_doc, list):
            raise LicenceError("terms: expected a list of terms")
        terms = tuple(_term(t, f"terms[{i}]") for i, t in enumerate(terms_doc))
        replacements = doc.get("replacements") or {}
        if not isinstance(replacements, dict):
            raise LicenceError("replacements: expected an object of country -> track id")
        refuse = doc.get("refuse_anonymous", False)
        if not isinstance(refuse, bool):
            raise LicenceError("refuse_anonymous: expected true or false")
        track = doc.get("track")
        if not isinstance(track, str):
            raise LicenceError("track: expected the track id")
        country_field = doc.get("country_field")
        if country_field is not None and not isinstance(country_field, str):
            raise LicenceError("country_field: expected a string")
        return cls(track, terms, {str(k).upper() if isinstance(k, str) else k: v for k, v in replacements.items()},
                   country_field, refuse)

    def to_dict(self) -> dict[str, Any]:
        return {"track": self.track, "terms": [t.to_dict() for t in self.terms],
                "replacements": dict(sorted(self.replacements.items())), "country_field": self.country_field,
                "refuse_anonymous": self.refuse_anonymous}

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2) + "\n").encode()


def _short(codes: frozenset[str]) -> str:
    listed = sorted(codes)
    return ", ".join(listed[:8]) + (f" and {len(listed) - 8} more" if len(listed) > 8 else "")


def _known(doc: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(doc) - set(keys))
    if unknown:
        raise LicenceError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(keys)})")


def _term(doc: Any, where: str) -> Term:
    if not isinstance(doc, dict):
        raise LicenceError(f"{where}: expected an object")
    _known(doc, ("allow", "deny", "not_before", "not_after", "model"), where)
    lists = {}
    for name in ("allow", "deny"):
        value = doc.get(name, [])
        if not isinstance(value, list):
            raise LicenceError(f"{where}.{name}: expected a list of territory codes")
        lists[name] = parse_codes(value, f"{where}.{name}", world=name == "allow")
    model = doc.get("model", "subscription")
    if not isinstance(model, str):
        raise LicenceError(f"{where}.model: expected a label")
    return Term(lists["allow"], lists["deny"], parse_instant(doc.get("not_before"), f"{where}.not_before"),
                parse_instant(doc.get("not_after"), f"{where}.not_after"), model)


@dataclass(frozen=True)
class Policy:
    """The node's side of a decision: what to do with unknown addresses, which country field by default."""

    unknown: str = "deny"  # "deny" (fail closed) or "allow"
    country_field: str = "country"

    def __post_init__(self) -> None:
        if self.unknown not in ("deny", "allow"):
            raise ValueError(f"unknown {self.unknown!r} must be 'deny' or 'allow'")
        if self.country_field not in FIELDS:
            raise ValueError(f"country_field {self.country_field!r} must be one of {', '.join(FIELDS)}")


DEFAULT_POLICY = Policy()


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    country: str | None
    replacement: str | None = None
    model: str | None = None


def deciding_field(licence: Licence, policy: Policy) -> str:
    """Which CountryInfo field decides for this licence."""
    return licence.country_field or policy.country_field


def decide(licence: Licence, country: str | None, now: float, policy: Policy = DEFAULT_POLICY, *,
           anonymous: bool = False) -> Decision:
    """May a listener in ``country`` (None: unknown) play ``licence``'s track at ``now``?"""
    if not any(t.state(now) == "open" for t in licence.terms):
        return _refuse(licence, _window_reason(licence.terms, now), country)
    if anonymous and licence.refuse_anonymous:
        return _refuse(licence, ANONYMOUS_PROXY, country)
    if country is None:
        if policy.unknown == "allow":
            open_term = next(t for t in licence.terms if t.state(now) == "open")
            return Decision(True, LICENSED, None, None, open_term.model)
        return Decision(False, UNKNOWN_TERRITORY, None)
    covering = [t for t in licence.terms if t.covers(country)]
    if not covering:
        return _refuse(licence, NOT_LICENSED, country)
    for term in covering:
        if term.state(now) == "open":
            return Decision(True, LICENSED, country, None, term.model)
    return _refuse(licence, _window_reason(covering, now), country)


def _window_reason(terms: Iterable[Term], now: float) -> str:
    return WINDOW_NOT_OPEN if any(t.state(now) == "not open" for t in terms) else WINDOW_CLOSED


def _refuse(licence: Licence, reason: str, country: str | None) -> Decision:
    return Decision(False, reason, country, licence.replacements.get(country) if country else None)


def world_licence(track: str, model: str = "subscription") -> Licence:
    """Licensed everywhere, always (what the demo writes)."""
    return Licence(track, (Term(frozenset({WORLD}), model=model),))
