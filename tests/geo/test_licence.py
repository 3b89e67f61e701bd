"""geo.licence: records validated strictly, decisions with their reasons."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from geo.licence import (
    ANONYMOUS_PROXY,
    ISO_CODES,
    LICENSED,
    NOT_LICENSED,
    UNKNOWN_TERRITORY,
    WINDOW_CLOSED,
    WINDOW_NOT_OPEN,
    Licence,
    LicenceError,
    Policy,
    decide,
    world_licence,
)


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


NOW = ts("2025-06-01T12:00:00")


def record(**over: object) -> bytes:
    doc: dict[str, object] = {"track": "song", "terms": [{"allow": ["GB"]}]}
    doc.update(over)
    return json.dumps(doc).encode()


def lic(**over: object) -> Licence:
    return Licence.from_json(record(**over))


def test_iso_list_is_complete() -> None:
    assert len(ISO_CODES) == 250  # 249 assigned + XK
    assert {"GB", "SE", "US", "DE", "JP", "PH", "XK", "SS", "BQ"} <= ISO_CODES
    assert not {"UK", "EU", "WW", "AN"} & ISO_CODES


def test_gb_only() -> None:
    licence = lic()
    assert decide(licence, "GB", NOW) == decide(licence, "GB", NOW)
    assert decide(licence, "GB", NOW).allowed and decide(licence, "GB", NOW).reason == LICENSED
    d = decide(licence, "SE", NOW)
    assert (d.allowed, d.reason, d.country) == (False, NOT_LICENSED, "SE")


def test_everywhere_but_se_with_replacement() -> None:
    licence = lic(terms=[{"allow": ["WW"], "deny": ["SE"]}], replacements={"se": "song-se"})
    assert decide(licence, "US", NOW).allowed
    assert decide(licence, "GB", NOW).allowed
    d = decide(licence, "SE", NOW)
    assert (d.allowed, d.reason, d.replacement) == (False, NOT_LICENSED, "song-se")


def test_windows() -> None:
    licence = lic(terms=[{"allow": ["GB"], "not_before": "2025-07-01T00:00:00Z"}])
    assert decide(licence, "GB", NOW).reason == WINDOW_NOT_OPEN
    assert decide(licence, "GB", ts("2025-07-01T00:00:00")).allowed  # not_before is inclusive
    licence = lic(terms=[{"allow": ["GB"], "not_after": "2025-06-01T12:00:00+00:00"}])
    assert decide(licence, "GB", NOW).reason == WINDOW_CLOSED  # not_after is exclusive
    assert decide(licence, "GB", NOW - 1).allowed
    # a bare date is midnight UTC; other offsets are converted
    licence = lic(terms=[{"allow": ["GB"], "not_before": "2025-06-02", "not_after": "2025-06-03T02:00:00+02:00"}])
    assert decide(licence, "GB", ts("2025-06-02T00:00:00")).allowed
    assert decide(licence, "GB", ts("2025-06-03T00:00:00")).reason == WINDOW_CLOSED


def test_terms_per_territory_and_window() -> None:
    licence = lic(terms=[
        {"allow": ["GB"], "not_after": "2025-05-01T00:00:00Z", "model": "subscription"},
        {"allow": ["GB"], "not_before": "2025-09-01T00:00:00Z", "model": "ad-supported"},
        {"allow": ["DE"], "model": "download"},
    ])
    assert decide(licence, "GB", NOW).reason == WINDOW_NOT_OPEN  # between two terms: one still to come
    assert decide(licence, "GB", ts("2025-10-01T00:00:00")).model == "ad-supported"
    assert decide(licence, "DE", NOW).model == "download"
    assert decide(licence, "FR", NOW).reason == NOT_LICENSED


def test_unknown_territory_fails_closed_by_default() -> None:
    licence = lic(terms=[{"allow": ["WW"]}])
    assert decide(licence, None, NOW).reason == UNKNOWN_TERRITORY
    assert not decide(licence, None, NOW).allowed
    assert decide(licence, None, NOW, Policy(unknown="allow")).allowed


def test_window_reason_comes_before_territory() -> None:
    licence = lic(terms=[{"allow": ["GB"], "not_after": "2020-01-01T00:00:00Z"}])
    assert decide(licence, "SE", NOW).reason == WINDOW_CLOSED
    assert decide(licence, None, NOW).reason == WINDOW_CLOSED


def test_anonymous_proxies() -> None:
    assert decide(lic(), "GB", NOW, anonymous=True).allowed
    d = decide(lic(refuse_anonymous=True), "GB", NOW, anonymous=True)
    assert (d.allowed, d.reason) == (False, ANONYMOUS_PROXY)


def test_round_trip() -> None:
    licence = lic(terms=[{"allow": ["WW"], "deny": ["SE"], "not_before": "2025-01-01T00:00:00Z",
                          "model": "ad-supported"}], replacements={"SE": "other"}, country_field="registered_country")
    assert Licence.from_json(licence.to_json()) == licence
    assert json.loads(licence.to_json())["terms"][0]["not_before"] == "2025-01-01T00:00:00Z"
    assert world_licence("x").terms[0].covers("SE")


@pytest.mark.parametrize(("data", "message"), [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[]", "must be a JSON object"),
    (record(terms=[{"allow": ["UK"]}]), "terms[0].allow: 'UK' is not a territory code"),
    (record(terms=[{"allow": ["GB"], "deny": ["WW"]}]), "terms[0].deny: 'WW' is not a territory code"),
    (record(terms=[{"allow": ["G"]}]), "'G' is not a territory code"),
    (record(terms=[{"allow": [7]}]), "7 is not a territory code"),
    (record(terms=[{"allow": []}]), "no territory"),
    (record(terms=[]), "at least one term"),
    (record(terms="GB"), "expected a list of terms"),
    (record(terms=[{"allow": ["GB"], "deny": ["GB"]}]), "GB both allowed and denied"),
    (record(terms=[{"allow": ["GB"], "not_before": "2025-02-01T00:00:00Z", "not_after": "2025-01-01T00:00:00Z"}]),
     "window is inverted"),
    (record(terms=[{"allow": ["GB"], "not_before": "2025-02-01T00:00:00"}]), "has no time zone"),
    (record(terms=[{"allow": ["GB"], "not_before": "next tuesday"}]), "not an ISO 8601 time"),
    (record(terms=[{"allow": ["GB"], "model": "Free Tier!"}]), "is not a label"),
    (record(terms=[{"allow": ["GB"], "colour": "red"}]), "unknown key 'colour'"),
    (record(terms=[{"allow": ["GB", "DE"]}, {"allow": ["DE"], "not_before": "2025-01-01T00:00:00Z"}]),
     "terms[0] and terms[1] overlap: both cover DE"),
    (record(terms=[{"allow": ["WW"]}, {"allow": ["SE"]}]), "overlap: both cover SE"),
    (record(replacements={"XX": "other"}), "replacements: 'XX'"),
    (record(replacements={"SE": "../etc"}), "is not another track's id"),
    (record(replacements={"SE": "song"}), "is not another track's id"),
    (record(track="../x"), "is not a track id"),
    (record(country_field="city"), "country_field"),
    (record(refuse_anonymous="yes"), "refuse_anonymous"),
    (record(extra=1), "unknown key 'extra'"),
    (b" " * 300_000, "over"),
])
def test_bad_records(data: bytes, message: str) -> None:
    with pytest.raises(LicenceError) as err:
        Licence.from_json(data)
    assert message in err.value.reason


def test_adjacent_windows_do_not_overlap_and_record_track_must_match() -> None:
    lic(terms=[{"allow": ["GB"], "not_after": "2025-01-01T00:00:00Z"},
               {"allow": ["GB"], "not_before": "2025-01-01T00:00:00Z"}])
    with pytest.raises(LicenceError, match="record is for 'song', not 'other'"):
        Licence.from_json(record(), track="other")


def test_shipped_example_record_is_valid() -> None:
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "config" / "licenses" / "joga.json"
    licence = Licence.from_json(example.read_bytes(), track="joga")
    assert decide(licence, "SE", ts("2025-06-01T00:00:00")).replacement == "joga-radio-edit"
    assert decide(licence, "US", ts("2025-06-01T00:00:00")).model == "ad-supported"
