"""legato/http.py: range maths, conditional requests, dates, ETags, Cache-Control, CORS."""

from __future__ import annotations

import calendar
import time

import pytest

from legato import http as h
from legato.urls import Kind

NOW = 1_795_320_000.0  # 2026-11-22T...Z
LM = 1_700_000_000  # Last-Modified of the representation
LM_DATE = h.http_date(LM)
ETAG = '"abc123"'
V = h.Validators(size=1000, etag=ETAG, last_modified=LM, last_modified_strong=True)


def R(first: int, last: int) -> h.RangeDecision:
    return h.RangeDecision(h.RangeOutcome.PARTIAL, h.ByteRange(first, last))


# ---------------------------------------------------------------- ranges


@pytest.mark.parametrize(("value", "expected"), [
    ("bytes=0-499", R(0, 499)),
    ("bytes=500-999", R(500, 999)),
    ("bytes=0-0", R(0, 0)),
    ("bytes=999-999", R(999, 999)),
    ("bytes=0-", R(0, 999)),  # open range
    ("bytes=900-", R(900, 999)),
    ("bytes=-1", R(999, 999)),  # suffix range
    ("bytes=-500", R(500, 999)),
    ("bytes=-5000", R(0, 999)),  # suffix longer than the representation: all of it
    ("bytes=0-5000", R(0, 999)),  # last-pos past the end is clamped
    ("bytes=0-99999999999999999999999999", R(0, 999)),  # overflow in last-pos
    ("bytes=-99999999999999999999999999", R(0, 999)),  # overflow in suffix
    ("bytes=" + "0" * 5000 + "-1", R(0, 1)),  # leading zeros, beyond int()'s digit limit
    ("BYTES=1-2", R(1, 2)),  # unit is case-insensitive (§14.1)
    ("bytes= 1-2 ", R(1, 2)),
    ("bytes=1-2,", R(1, 2)),  # empty list elements are allowed (§5.6.1)
    (",bytes=1-2", h.RangeDecision(h.RangeOutcome.MALFORMED, reason="Range is not unit=ranges")),
])
def test_parse_range_satisfiable_and_clamped(value: str, expected: h.RangeDecision) -> None:
    got = h.parse_range(value, 1000)
    assert (got.outcome, got.range) == (expected.outcome, expected.range)


@pytest.mark.parametrize("value", [
    "bytes=1000-", "bytes=1000-1000", "bytes=5000-6000", "bytes=-0",
    "bytes=99999999999999999999999999-", "bytes=" + "9" * 5000 + "-",
])
def test_parse_range_unsatisfiable(value: str) -> None:
    assert h.parse_range(value, 1000).outcome is h.RangeOutcome.UNSATISFIABLE


@pytest.mark.parametrize("value", [
    "bytes=", "bytes=-", "bytes=abc", "bytes=5-2", "bytes=1-2-3", "bytes=1 -2", "bytes=0x10-20",
    "bytes=+1-2", "bytes=1.5-2", "bytes", "=0-1", "0-1", "bytes==0-1", "bytes=\x00-1", "bytes=١-٢",
])
def test_parse_range_malformed(value: str) -> None:
    decision = h.parse_range(value, 1000)
    assert decision.outcome is h.RangeOutcome.MALFORMED and decision.reason


@pytest.mark.parametrize("value", ["bytes=0-1,5-9", "bytes=0-1, 2-3, 4-5", "bytes=-1,0-0", "bytes=0-1, bytes=2-3"])
def test_parse_range_multiple_is_its_own_outcome(value: str) -> None:
    decision = h.parse_range(value, 1000)
    assert decision.outcome is h.RangeOutcome.MULTIPLE
    assert "multiple ranges" in decision.reason


@pytest.mark.parametrize("value", [None, "items=0-5", "pages=1-2,4-5"])
def test_parse_range_absent_or_unknown_unit_means_full(value: str | None) -> None:
    # §14.2: a server MUST ignore a Range with a unit it does not understand
    assert h.parse_range(value, 1000).outcome is h.RangeOutcome.FULL


def test_parse_range_on_empty_representation() -> None:
    assert h.parse_range("bytes=0-", 0).outcome is h.RangeOutcome.UNSATISFIABLE
    assert h.parse_range("bytes=0-0", 0).outcome is h.RangeOutcome.UNSATISFIABLE
    assert h.parse_range("bytes=-0", 0).outcome is h.RangeOutcome.UNSATISFIABLE
    # §14.1.1: only a non-zero suffix is satisfiable; it selects the empty whole
    assert h.parse_range("bytes=-5", 0).outcome is h.RangeOutcome.FULL


def test_content_range_values() -> None:
    assert h.ByteRange(0, 499).content_range(1000) == "bytes 0-499/1000"
    assert h.ByteRange(0, 499).length == 500
    assert h.unsatisfied_content_range(1000) == "bytes */1000"


# ---------------------------------------------------------------- dates


@pytest.mark.parametrize("value", [
    "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
    "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850
    "Sun Nov  6 08:49:37 1994",  # asctime
])
def test_parse_http_date_accepts_the_three_formats(value: str) -> None:
    assert h.parse_http_date(value, NOW) == 784111777


@pytest.mark.parametrize("value", [
    "", "yesterday", "Sun, 06 Nov 1994 08:49:37", "Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 6 Nov 1994 08:49:37 GMT",
    "Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 06 Nov 1994 25:49:37 GMT", "1700000000",
    "Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT",
])
def test_parse_http_date_rejects_junk(value: str) -> None:
    assert h.parse_http_date(value, NOW) is None


def test_rfc850_two_digit_year_resolves_against_now() -> None:
    # §5.6.7: more than 50 years in the future means the previous century
    now_2026 = calendar.timegm((2026, 1, 1, 0, 0, 0, 0, 0, 0))
    assert time_year(h.parse_http_date("Thursday, 01-Jan-70 00:00:00 GMT", now_2026)) == 2070  # 44 years ahead
    assert time_year(h.parse_http_date("Friday, 01-Jan-49 00:00:00 GMT", now_2026)) == 2049
    assert time_year(h.parse_http_date("Monday, 01-Jan-77 00:00:00 GMT", now_2026)) == 1977


def time_year(ts: int | None) -> int:
    assert ts is not None
    return time.gmtime(ts).tm_year


def test_http_date_round_trip() -> None:
    assert h.http_date(784111777) == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert h.parse_http_date(h.http_date(LM), NOW) == LM


def test_last_modified_never_in_the_future() -> None:
    assert h.last_modified(NOW + 3600.7, NOW) == int(NOW)  # §8.8.2.1
    assert h.last_modified(LM + 0.9, NOW) == LM


def test_last_modified_strength() -> None:
    assert h.last_modified_is_strong(LM, LM + 1)
    assert not h.last_modified_is_strong(LM, LM + 0.5)  # may change again within that second


# ---------------------------------------------------------------- entity tags


def test_parse_etag_and_lists() -> None:
    assert h.parse_etag('"x"') == h.EntityTag("x")
    assert h.parse_etag('W/"x"') == h.EntityTag("x", weak=True)
    assert h.parse_etag('x') is None
    assert h.parse_etag('"a"b"') is None
    assert h.parse_etag_list("*") is None
    assert h.parse_etag_list('"a", W/"b" ,"c"') == (h.EntityTag("a"), h.EntityTag("b", True), h.EntityTag("c"))
    assert h.parse_etag_list('"a", , "b"') == (h.EntityTag("a"), h.EntityTag("b"))
    assert h.parse_etag_list('"a" junk, "b"') == (h.EntityTag("a"),)  # stops at junk
    assert h.parse_etag_list("junk") == ()
    assert h.strong_etag("ff") == '"ff"'


def test_etag_comparison_functions() -> None:
    # RFC 9110 §8.8.3.2 table
    w1, w2, s1 = h.EntityTag("1", True), h.EntityTag("2", True), h.EntityTag("1")
    assert not h.strong_match(w1, w1) and h.weak_match(w1, w1)
    assert not h.strong_match(w1, w2) and not h.weak_match(w1, w2)
    assert not h.strong_match(w1, s1) and h.weak_match(w1, s1)
    assert h.strong_match(s1, s1) and h.weak_match(s1, s1)


# ---------------------------------------------------------------- conditionals


def ev(method: str = "GET", v: h.Validators = V, **headers: str) -> h.Decision:
    return h.evaluate(method, {k.replace("_", "-"): val for k, val in headers.items()}, v, NOW)


def test_no_conditions_is_200() -> None:
    assert ev().status == 200
    assert ev("HEAD").status == 200


@pytest.mark.parametrize(("inm", "status"), [
    (ETAG, 304), ('W/"abc123"', 304), (f'"zzz", {ETAG}', 304), ("*", 304), ('"zzz"', 200), ("junk", 200),
])
def test_if_none_match(inm: str, status: int) -> None:
    assert ev(if_none_match=inm).status == status
    assert ev("HEAD", if_none_match=inm).status == status


def test_if_none_match_on_unsafe_method_is_412() -> None:
    assert ev("DELETE", if_none_match=ETAG).status == 412


@pytest.mark.parametrize(("im", "status"), [
    (ETAG, 200), ("*", 200), (f'"zzz", {ETAG}', 200), ('"zzz"', 412), ('W/"abc123"', 412), ("junk", 412),
])
def test_if_match_uses_strong_comparison(im: str, status: int) -> None:
    assert ev(if_match=im).status == status


def test_if_match_against_weak_current_etag_fails() -> None:
    weak = h.Validators(1000, 'W/"abc123"', LM, True)
    assert ev(v=weak, if_match='"abc123"').status == 412
    assert ev(v=weak, if_none_match='"abc123"').status == 304  # weak comparison for INM


@pytest.mark.parametrize(("ims", "status"), [
    (LM_DATE, 304), (h.http_date(LM + 10), 304), (h.http_date(LM - 1), 200), ("not a date", 200),
    (f"{LM_DATE}, {LM_DATE}", 200),  # a list is not a valid HTTP-date: ignored
])
def test_if_modified_since(ims: str, status: int) -> None:
    assert ev(if_modified_since=ims).status == status


def test_if_modified_since_only_for_get_and_head() -> None:
    assert ev("HEAD", if_modified_since=LM_DATE).status == 304
    assert ev("OPTIONS", if_modified_since=LM_DATE).status == 200


def test_if_modified_since_needs_a_last_modified() -> None:
    assert ev(v=h.Validators(1000, ETAG), if_modified_since=LM_DATE).status == 200


@pytest.mark.parametrize(("ius", "status"), [
    (LM_DATE, 200), (h.http_date(LM + 10), 200), (h.http_date(LM - 1), 412), ("not a date", 200),
])
def test_if_unmodified_since(ius: str, status: int) -> None:
    assert ev(if_unmodified_since=ius).status == status


def test_precedence_if_match_over_if_unmodified_since() -> None:
    # §13.1.4: If-Unmodified-Since is ignored when If-Match is present
    assert ev(if_match=ETAG, if_unmodified_since=h.http_date(LM - 1)).status == 200
    assert ev(if_match='"zzz"', if_unmodified_since=h.http_date(LM + 1)).status == 412


def test_precedence_if_none_match_over_if_modified_since() -> None:
    # §13.1.3: If-Modified-Since is ignored when If-None-Match is present
    assert ev(if_none_match='"zzz"', if_modified_since=LM_DATE).status == 200
    assert ev(if_none_match=ETAG, if_modified_since=h.http_date(LM - 1)).status == 304


def test_precedence_412_before_304() -> None:
    # §13.2.2: step 1 (If-Match) is evaluated before step 3 (If-None-Match)
    assert ev(if_match='"zzz"', if_none_match=ETAG).status == 412
    assert ev(if_unmodified_since=h.http_date(LM - 1), if_none_match=ETAG).status == 412


def test_preconditions_before_range() -> None:
    assert ev(if_none_match=ETAG, range="bytes=0-1").status == 304
    assert ev(if_match='"zzz"', range="bytes=5000-").status == 412
    assert ev(if_none_match=ETAG, range="bytes=5000-").status == 304


def test_range_decisions() -> None:
    d = ev(range="bytes=10-19")
    assert (d.status, d.range) == (206, h.ByteRange(10, 19))
    assert ev(range="bytes=2000-").status == 416
    assert ev(range="bytes=junk").status == 416
    d = ev(range="bytes=0-1,3-4")
    assert d.status == 416 and "multiple" in d.reason
    assert ev(range="lines=1-2").status == 200


def test_range_is_for_get_only() -> None:
    # §14.2: GET is the only method for which range handling is defined
    assert ev("HEAD", range="bytes=0-1").status == 200
    assert ev("HEAD", range="bytes=junk").status == 200


@pytest.mark.parametrize(("if_range", "status"), [
    (ETAG, 206),
    ('"zzz"', 200),
    ('W/"abc123"', 200),  # weak tags never match If-Range
    (LM_DATE, 206),
    (h.http_date(LM + 1), 200),  # must match exactly
    ("garbage", 200),
])
def test_if_range(if_range: str, status: int) -> None:
    assert ev(range="bytes=0-9", if_range=if_range).status == status


def test_if_range_date_needs_a_strong_last_modified() -> None:
    fresh = h.Validators(1000, ETAG, LM, last_modified_strong=False)
    assert ev(v=fresh, range="bytes=0-9", if_range=LM_DATE).status == 200
    assert ev(v=fresh, range="bytes=0-9", if_range=ETAG).status == 206


def test_if_range_false_ignores_even_a_bad_range() -> None:
    assert ev(range="bytes=5000-", if_range='"zzz"').status == 200


def test_if_range_without_range_is_ignored() -> None:
    assert ev(if_range='"zzz"').status == 200


def test_fold_headers_joins_repeats_and_lowercases() -> None:
    folded = h.fold_headers([("Range", "bytes=0-1"), ("Host", "x"), ("range", "bytes=2-3"), ("If-None-Match", ETAG)])
    assert folded == {"range": "bytes=0-1, bytes=2-3", "if-none-match": ETAG}
    assert h.evaluate("GET", folded, V, NOW).status == 304
    del folded["if-none-match"]
    assert h.evaluate("GET", folded, V, NOW).status == 416  # two Range lines = two ranges


# ---------------------------------------------------------------- Cache-Control


def test_cache_control_builder() -> None:
    assert h.cache_control(public=True, max_age=31536000, immutable=True) == "public, max-age=31536000, immutable"
    assert h.cache_control(public=True, max_age=60) == "public, max-age=60"
    assert h.cache_control(no_store=True) == "no-store"
    assert h.cache_control(private=True, no_cache=True, s_maxage=0, must_revalidate=True) == \
        "private, no-cache, s-maxage=0, must-revalidate"
    with pytest.raises(ValueError):
        h.cache_control(max_age=-1)


def test_cache_control_parser() -> None:
    cc = h.parse_cache_control('Public, MAX-AGE=60, no-cache="set-cookie, x", s-maxage="1\\0", , junk==x, max-age=5')
    assert cc == {"public": None, "max-age": "60", "no-cache": "set-cookie, x", "s-maxage": "10"}
    assert h.parse_cache_control("") == {}
    assert h.parse_cache_control(h.cache_control(public=True, max_age=1, immutable=True)) == \
        {"public": None, "max-age": "1", "immutable": None}


@pytest.mark.parametrize(("arg", "value"), [
    ("60", 60), ("0", 0), ("99999999999999999999999", h.DELTA_SECONDS_MAX), ("-1", None), ("1.5", None),
    ("", None), (None, None), ("٣", None),
])
def test_delta_seconds(arg: str | None, value: int | None) -> None:
    assert h.delta_seconds(arg) == value


# ---------------------------------------------------------------- content types, CORS


def test_content_types_by_kind() -> None:
    assert h.content_type(Kind.MASTER) == "application/vnd.apple.mpegurl"
    assert h.content_type(Kind.MEDIA_PLAYLIST) == "application/vnd.apple.mpegurl"
    assert h.content_type(Kind.MPD) == "application/dash+xml"
    assert h.content_type(Kind.INIT) == h.content_type(Kind.SEGMENT) == "audio/mp4"
    assert h.content_type(Kind.TRACK_JSON) == h.content_type(Kind.LICENSE) == "application/json"
    assert set(h.CONTENT_TYPES) == set(Kind)


def test_cors_single_origin_needs_no_vary() -> None:
    headers = h.cors_headers(("*",), "https://player.example")
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "Vary" not in headers
    exposed = {x.strip() for x in headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Content-Range", "Content-Length", "ETag", "Age"} <= exposed


def test_cors_origin_list_reflects_and_varies() -> None:
    allowed = ("https://a.example", "https://b.example")
    headers = h.cors_headers(allowed, "https://b.example")
    assert headers["Access-Control-Allow-Origin"] == "https://b.example"
    assert headers["Vary"] == "Origin"
    assert h.cors_headers(allowed, "https://evil.example") == {"Vary": "Origin"}
    assert h.cors_headers(allowed, None) == {"Vary": "Origin"}
    assert h.cors_headers((), "https://a.example") == {}


def test_preflight_headers() -> None:
    headers = h.preflight_headers(("*",), "https://player.example")
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Access-Control-Allow-Methods"] == "GET, HEAD, OPTIONS"
    allowed = {x.strip().lower() for x in headers["Access-Control-Allow-Headers"].split(",")}
    assert {"range", "if-none-match", "if-modified-since", "if-range"} <= allowed
    assert int(headers["Access-Control-Max-Age"]) > 0
    assert "Access-Control-Allow-Methods" not in h.preflight_headers(("https://a.example", "https://b.example"), "https://c.example")


def test_parse_origins() -> None:
    assert h.parse_origins("*") == ("*",)
    assert h.parse_origins("https://a.example, https://b.example") == ("https://a.example", "https://b.example")
    assert h.parse_origins("") == ()
    with pytest.raises(ValueError):
        h.parse_origins("*, https://a.example")
