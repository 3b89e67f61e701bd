"""cache/freshness.py: RFC 9111 storability, lifetime, age and the serve decision."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cache.freshness import (
    AGE_MAX,
    HEURISTIC_MAX,
    CachedResponse,
    ClientDirectives,
    Freshness,
    age_header,
    assess,
    current_age,
    freshness_lifetime,
    storable,
    strip_for_storage,
    update_stored_headers,
)
from legato.http import http_date

T0 = 1_700_000_000.0  # a whole second, so HTTP dates are exact
DAY = 86_400.0


def cached(cache_control: str = "", *, status: int = 200, age_field: str | None = None, date: float | None = T0,
           request_time: float = T0, response_time: float = T0, **extra: str) -> CachedResponse:
    headers = {"Cache-Control": cache_control, **{k.replace("_", "-"): v for k, v in extra.items()}}
    if date is not None:
        headers["Date"] = http_date(date)
    if age_field is not None:
        headers["Age"] = age_field
    return CachedResponse.from_response(status, headers, request_time, response_time)


# --------------------------------------------------------------------------
# §3 storable


@pytest.mark.parametrize(("method", "status", "response", "request_", "ok"), [
    ("GET", 200, {"Cache-Control": "public, max-age=60, immutable"}, {}, True),
    ("GET", 200, {}, {}, True),  # heuristically cacheable status (lifetime decided later)
    ("HEAD", 200, {"Cache-Control": "max-age=60"}, {}, False),  # answered from the GET entry
    ("POST", 200, {"Cache-Control": "max-age=60"}, {}, False),
    ("GET", 101, {}, {}, False),
    ("GET", 206, {"Cache-Control": "max-age=60"}, {}, False),
    ("GET", 304, {"Cache-Control": "max-age=60"}, {}, False),
    ("GET", 200, {"Cache-Control": "max-age=60, no-store"}, {}, False),
    ("GET", 200, {"Cache-Control": "no-store, must-understand"}, {}, True),  # §5.2.2.3
    ("GET", 299, {"Cache-Control": "max-age=60, must-understand"}, {}, False),
    ("GET", 200, {"Cache-Control": "private"}, {}, False),
    ("GET", 200, {"Cache-Control": 'private="set-cookie", max-age=60'}, {}, False),
    ("GET", 200, {"Cache-Control": "max-age=60"}, {"Authorization": "Bearer x"}, False),  # §3.5
    ("GET", 200, {"Cache-Control": "public"}, {"Authorization": "Bearer x"}, True),
    ("GET", 200, {"Cache-Control": "s-maxage=60"}, {"Authorization": "Bearer x"}, True),
    ("GET", 200, {"Cache-Control": "must-revalidate"}, {"authorization": "Bearer x"}, True),
    ("GET", 200, {"Cache-Control": "max-age=60", "Vary": "*"}, {}, False),
    ("GET", 200, {"Cache-Control": "max-age=60", "Vary": "Origin"}, {}, True),
    ("GET", 500, {}, {}, False),  # not heuristically cacheable, nothing explicit
    ("GET", 500, {"Cache-Control": "max-age=5"}, {}, True),
    ("GET", 503, {"Expires": "Thu, 01 Jan 2037 00:00:00 GMT"}, {}, True),
    ("GET", 404, {}, {}, True),
    ("GET", 200, {"Cache-Control": "max-age=60"}, {"Cache-Control": "no-store"}, False),  # §5.2.1.5
    ("GET", 200, {"Cache-Control": "max-age=60, immutable"}, {"Cache-Control": "no-store"}, True),
    ("GET", 200, {"pragma": "no-cache"}, {}, True),  # Pragma is not Cache-Control (§5.4)
])
def test_storable(method: str, status: int, response: dict[str, str], request_: dict[str, str], ok: bool) -> None:
    decision = storable(method, status, response, request_)
    assert bool(decision) is ok, decision.reason
    assert decision.reason or ok


def test_storable_folds_repeated_fields() -> None:
    response = [("Cache-Control", "max-age=60"), ("cache-control", "no-store")]
    assert not storable("GET", 200, response)


@pytest.mark.parametrize(("client", "immutable", "ok"), [
    (ClientDirectives.IGNORE, False, True),
    (ClientDirectives.MUTABLE_ONLY, False, False),
    (ClientDirectives.MUTABLE_ONLY, True, True),
    (ClientDirectives.HONOUR, True, False),
])
def test_client_no_store_policy(client: ClientDirectives, immutable: bool, ok: bool) -> None:
    response = {"Cache-Control": "max-age=60" + (", immutable" if immutable else "")}
    assert bool(storable("GET", 200, response, {"Cache-Control": "no-store"}, client=client)) is ok


# --------------------------------------------------------------------------
# §4.2.1 lifetime


@pytest.mark.parametrize(("headers", "lifetime", "heuristic"), [
    ({"Cache-Control": "max-age=60, s-maxage=30"}, 30.0, False),
    ({"Cache-Control": "max-age=60", "Expires": http_date(T0 + 999)}, 60.0, False),
    ({"Expires": http_date(T0 + 120), "Date": http_date(T0)}, 120.0, False),
    ({"Expires": http_date(T0 + 120)}, 120.0, False),  # no Date: the response time (T0)
    ({"Expires": http_date(T0 + 120), "Date": http_date(T0 + 100)}, 20.0, False),
    ({"Expires": "0"}, 0.0, False),  # §5.3: invalid means already expired
    ({"Expires": http_date(T0 - 50)}, 0.0, False),
    ({"Cache-Control": "max-age=soon", "Expires": http_date(T0 + 120)}, 0.0, False),  # invalid: stale
    ({"Cache-Control": "max-age=99999999999"}, 2_147_483_648.0, False),
    ({"Last-Modified": http_date(T0 - 5 * DAY)}, 0.5 * DAY, True),  # 10% of the age of the content
    ({"Last-Modified": http_date(T0 - 100 * DAY)}, HEURISTIC_MAX, True),
    ({"Last-Modified": http_date(T0 + 100)}, 0.0, True),  # modified in the future
    ({}, 0.0, True),
])
def test_freshness_lifetime(headers: dict[str, str], lifetime: float, heuristic: bool) -> None:
    assert freshness_lifetime(200, headers, T0) == (lifetime, heuristic)


def test_heuristic_only_for_cacheable_statuses_or_public() -> None:
    modified = {"Last-Modified": http_date(T0 - 10 * DAY)}
    assert freshness_lifetime(500, modified, T0) == (0.0, False)
    assert freshness_lifetime(500, {**modified, "Cache-Control": "public"}, T0) == (DAY, True)
    assert freshness_lifetime(404, modified, T0) == (DAY, True)


# --------------------------------------------------------------------------
# §4.2.3 age


def test_current_age_follows_the_rfc_example() -> None:
    # Date 1000, request sent at 1001, response received at 1003 carrying Age: 5
    c = cached("max-age=60", date=T0, request_time=T0 + 1, response_time=T0 + 3, age_field="5")
    # apparent_age = 3; corrected_age_value = 5 + 2 = 7; initial = 7; resident = 10
    assert current_age(c, T0 + 13) == pytest.approx(17.0)
    c = cached("max-age=60", date=T0 - 20, request_time=T0 + 1, response_time=T0 + 3, age_field="5")
    assert current_age(c, T0 + 13) == pytest.approx(33.0)  # apparent age (23) wins


@pytest.mark.parametrize(("age_field", "age"), [("5, 9", 5.0), ("abc", 0.0), ("-3", 0.0), ("", 0.0)])
def test_age_field_parsing(age_field: str, age: float) -> None:
    assert cached("max-age=60", age_field=age_field).age == age


def test_a_date_in_the_future_is_not_a_negative_age() -> None:
    c = cached("max-age=60", date=T0 + 3600)
    assert current_age(c, T0) == 0.0


def test_missing_date_means_the_response_time() -> None:
    c = cached("max-age=60", date=None, response_time=T0 + 7)
    assert c.date == T0 + 7


@given(
    st.floats(0, 1e6), st.floats(0, 100), st.floats(0, 100), st.floats(0, 1e6), st.floats(0, 1e6),
    st.integers(0, 10**6),
)
def test_age_is_never_negative_and_grows_with_time(skew: float, delay: float, resident: float, later: float,
                                                   lifetime: float, age_field: int) -> None:
    c = CachedResponse(200, date=T0 + skew - 5e5, age=float(age_field), request_time=T0, response_time=T0 + delay,
                       lifetime=lifetime)
    now = T0 + delay + resident
    a, b = current_age(c, now), current_age(c, now + later)
    assert 0 <= a <= b
    verdict = assess(c, now)
    assert (verdict.freshness is Freshness.FRESH) == (lifetime > a)
    assert int(verdict.age_header) == min(int(a), AGE_MAX)


# --------------------------------------------------------------------------
# The decision


@pytest.mark.parametrize(("cache_control", "elapsed", "freshness"), [
    ("max-age=60", 10, Freshness.FRESH),
    ("max-age=60", 60, Freshness.STALE),  # fresh only while lifetime > age
    ("max-age=60, stale-while-revalidate=30", 70, Freshness.STALE_WHILE_REVALIDATE),
    ("max-age=60, stale-while-revalidate=30", 100, Freshness.STALE),
    ("max-age=60, stale-while-revalidate=30, stale-if-error=600", 100, Freshness.STALE_IF_ERROR_ONLY),
    ("max-age=60, stale-if-error=600", 700, Freshness.STALE),
    ("max-age=60, stale-while-revalidate=30, must-revalidate", 70, Freshness.STALE),
    ("max-age=60, stale-if-error=600, proxy-revalidate", 70, Freshness.STALE),
    ("s-maxage=60, stale-while-revalidate=30", 70, Freshness.STALE),  # s-maxage implies proxy-revalidate
    ("max-age=60, no-cache", 1, Freshness.STALE),
    ('max-age=60, no-cache="set-cookie"', 1, Freshness.STALE),
    ("max-age=31536000, immutable", 30 * DAY, Freshness.FRESH),
])
def test_assess(cache_control: str, elapsed: float, freshness: Freshness) -> None:
    verdict = assess(cached(cache_control), T0 + elapsed)
    assert verdict.freshness is freshness, verdict.reason
    assert verdict.age == elapsed
    assert verdict.age_header == str(int(elapsed))
    assert verdict.usable_now == (freshness in (Freshness.FRESH, Freshness.STALE_WHILE_REVALIDATE))


PLAYLIST = "max-age=2, stale-while-revalidate=10"
SEGMENT = "public, max-age=31536000, immutable"


@pytest.mark.parametrize(("cache_control", "elapsed", "request_cc", "client", "freshness"), [
    # a client's reload of a playlist revalidates; the stored copy stays a fallback while fresh
    (PLAYLIST, 1, "no-cache", ClientDirectives.MUTABLE_ONLY, Freshness.STALE_IF_ERROR_ONLY),
    (PLAYLIST, 1, "max-age=0", ClientDirectives.MUTABLE_ONLY, Freshness.STALE_IF_ERROR_ONLY),
    (PLAYLIST, 1, "max-age=5", ClientDirectives.MUTABLE_ONLY, Freshness.FRESH),
    (PLAYLIST, 1, "min-fresh=5", ClientDirectives.MUTABLE_ONLY, Freshness.STALE_IF_ERROR_ONLY),
    (PLAYLIST, 1, "no-cache", ClientDirectives.IGNORE, Freshness.FRESH),
    (PLAYLIST, 5, "no-cache", ClientDirectives.MUTABLE_ONLY, Freshness.STALE),  # no stale-while-revalidate
    (PLAYLIST, 5, "", ClientDirectives.MUTABLE_ONLY, Freshness.STALE_WHILE_REVALIDATE),
    (PLAYLIST, 30, "max-stale", ClientDirectives.MUTABLE_ONLY, Freshness.STALE_WHILE_REVALIDATE),
    (PLAYLIST, 30, "max-stale=100", ClientDirectives.MUTABLE_ONLY, Freshness.STALE_WHILE_REVALIDATE),
    (PLAYLIST, 30, "max-stale=10", ClientDirectives.MUTABLE_ONLY, Freshness.STALE),
    ("max-age=2, must-revalidate", 30, "max-stale", ClientDirectives.HONOUR, Freshness.STALE),
    # a segment: reloads never reach the origin, unless the operator asked for the letter of the RFC
    (SEGMENT, 60, "no-cache", ClientDirectives.MUTABLE_ONLY, Freshness.FRESH),
    (SEGMENT, 60, "max-age=0", ClientDirectives.MUTABLE_ONLY, Freshness.FRESH),
    (SEGMENT, 60, "no-cache", ClientDirectives.HONOUR, Freshness.STALE_IF_ERROR_ONLY),
])
def test_client_directives(cache_control: str, elapsed: float, request_cc: str, client: ClientDirectives,
                           freshness: Freshness) -> None:
    verdict = assess(cached(cache_control), T0 + elapsed, {"Cache-Control": request_cc}, client=client)
    assert verdict.freshness is freshness, verdict.reason


def test_age_header() -> None:
    assert age_header(0.9) == "0"
    assert age_header(-5) == "0"
    assert age_header(float("nan")) == "0"
    assert age_header(61.7) == "61"
    assert age_header(1e12) == str(AGE_MAX)


def test_cached_response_round_trips_as_plain_values() -> None:
    c = cached("max-age=60, stale-while-revalidate=5, stale-if-error=7, immutable", age_field="3")
    data = dataclasses.asdict(c)
    assert CachedResponse(**data) == c
    assert (c.lifetime, c.age, c.immutable, c.stale_while_revalidate, c.stale_if_error) == (60.0, 3.0, True, 5.0, 7.0)


# --------------------------------------------------------------------------
# §3.1, §3.2 header sets


def test_strip_for_storage_drops_hop_by_hop_fields() -> None:
    headers = [("Connection", "close, X-Trace"), ("X-Trace", "1"), ("Keep-Alive", "5"), ("Transfer-Encoding", "chunked"),
               ("ETag", '"a"'), ("Content-Length", "10"), ("Proxy-Authenticate", "Basic")]
    assert strip_for_storage(headers) == [("ETag", '"a"'), ("Content-Length", "10")]


def test_update_stored_headers_from_a_304() -> None:
    stored = [("Content-Length", "100"), ("ETag", '"a"'), ("Cache-Control", "max-age=10"), ("Date", "d1"),
              ("Content-Type", "audio/mp4")]
    fresh = {"ETag": '"a"', "cache-control": "max-age=20", "Date": "d2", "Content-Length": "0", "Connection": "close"}
    assert update_stored_headers(stored, fresh) == [
        ("Content-Length", "100"), ("Content-Type", "audio/mp4"),
        ("ETag", '"a"'), ("cache-control", "max-age=20"), ("Date", "d2"),
    ]
