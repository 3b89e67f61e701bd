"""edge.geo_gate in process: the decisions the end-to-end test cannot reach cheaply
(anonymous proxies, upstream trouble, several tracks in one token, memo timing).

The node stands in for the engine with only what the gate uses
(``fetch_bytes``, ``origins``); the database is MaxMind's test file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from cache.upstream import UpstreamError
from edge.gates import CLAIMS_KEY
from edge.geo_gate import GeoGate
from geo.config import GeoConfig
from geo.country import CountryDB
from legato import urls

DATA = Path(__file__).resolve().parents[1] / "data" / "maxmind"
GB, SE, TOR = "81.2.69.160", "89.160.20.112", "65.1.2.3"


@dataclass
class StandIn:
    """What the gate needs of cache.node.Node."""

    objects: dict[str, bytes | None] = field(default_factory=dict)
    failing: bool = False
    reads: int = 0
    origins: tuple[str, ...] = ("*",)

    async def fetch_bytes(self, path: str) -> bytes | None:
        self.reads += 1
        if self.failing:
            raise UpstreamError(503, "no healthy upstream")
        return self.objects.get(path)

    def licence(self, track: str, doc: object) -> None:
        self.objects[f"/licenses/{track}.json"] = json.dumps(doc).encode() if not isinstance(doc, bytes) else doc
        self.objects[f"/tracks/{track}/track.json"] = b"{}"


@dataclass
class Claims:
    tracks: tuple[str, ...]


class Clock:
    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


def gate(clock: Clock, registry: CollectorRegistry | None = None, **geo: object) -> GeoGate:
    config = GeoConfig(database=str(DATA / "GeoIP2-City-Test.mmdb"), trusted_proxies=("127.0.0.1/32",), **geo)  # type: ignore[arg-type]
    db = CountryDB(config.database_path(), DATA / "GeoIP2-Anonymous-IP-Test.mmdb")
    return GeoGate(config, db, registry=registry, clock=clock)


def request(path: str, client: str, claims: Claims | None = None):  # type: ignore[no-untyped-def]
    req = make_mocked_request("GET", path, headers=CIMultiDict({"X-Forwarded-For": client}))
    req._transport_peername = ("127.0.0.1", 5555)  # type: ignore[attr-defined]
    if claims is not None:
        req[CLAIMS_KEY] = claims
    return req


async def check(g: GeoGate, node: StandIn, path: str, client: str, claims: Claims | None = None):  # type: ignore[no-untyped-def]
    route = urls.parse(path)
    assert route is not None
    return await g.check(request(path, client, claims), route, node)


def reason(resp) -> str:  # type: ignore[no-untyped-def]
    assert resp is not None and resp.status == 451
    return json.loads(resp.body)["reason"]


async def test_anonymous_proxies_refused_only_where_the_licence_says() -> None:
    node, clock = StandIn(), Clock()
    node.licence("open", {"track": "open", "terms": [{"allow": ["WW"]}]})
    node.licence("strict", {"track": "strict", "terms": [{"allow": ["WW"]}], "refuse_anonymous": True})
    g = gate(clock)
    assert await check(g, node, "/tracks/open/master.m3u8", GB) is None  # GB, every anonymous flag set
    assert reason(await check(g, node, "/tracks/strict/master.m3u8", GB)) == "anonymous proxy"
    assert reason(await check(g, node, "/tracks/strict/master.m3u8", TOR)) == "anonymous proxy"
    assert await check(g, node, "/tracks/strict/master.m3u8", SE) is None


async def test_keys_take_their_tracks_from_the_token() -> None:
    node, clock = StandIn(), Clock()
    node.licence("a", {"track": "a", "terms": [{"allow": ["WW"]}]})
    node.licence("b", {"track": "b", "terms": [{"allow": ["GB"]}]})
    g = gate(clock)
    key = "/keys/" + "0" * 32
    assert await check(g, node, key, SE) is None  # no claims: origin checks key ownership
    assert await check(g, node, key, SE, Claims(("a",))) is None
    resp = await check(g, node, key, SE, Claims(("a", "b")))  # every track of the token must be licensed
    assert reason(resp) == "not licensed in territory" and json.loads(resp.body)["track"] == "b"
    assert await check(g, node, "/license/clearkey", GB, Claims(("a", "b"))) is None


async def test_upstream_trouble_keeps_the_last_good_licence_or_answers_503() -> None:
    node, clock = StandIn(), Clock()
    node.licence("a", {"track": "a", "terms": [{"allow": ["GB"]}]})
    g = gate(clock)
    node.failing = True
    resp = await check(g, node, "/tracks/a/master.m3u8", GB)
    assert resp is not None and resp.status == 503 and b"unavailable" in resp.body
    node.failing = False
    assert await check(g, node, "/tracks/a/master.m3u8", GB) is None
    node.failing = True
    clock.now += 10
    assert await check(g, node, "/tracks/a/master.m3u8", GB) is None  # the last good one stands
    assert reason(await check(g, node, "/tracks/a/master.m3u8", SE)) == "not licensed in territory"


async def test_licence_is_reread_after_license_max_age() -> None:
    node, clock = StandIn(), Clock()
    node.licence("a", {"track": "a", "terms": [{"allow": ["GB"]}]})
    g = gate(clock, license_max_age=5.0)
    for _ in range(3):
        await check(g, node, "/tracks/a/master.m3u8", GB)
    assert node.reads == 1
    node.licence("a", {"track": "a", "terms": [{"allow": ["SE"]}]})
    clock.now += 4
    assert await check(g, node, "/tracks/a/master.m3u8", GB) is None
    clock.now += 2
    assert reason(await check(g, node, "/tracks/a/master.m3u8", GB)) == "not licensed in territory"


async def test_record_for_another_track_is_refused_and_the_previous_kept() -> None:
    node, clock = StandIn(), Clock()
    node.licence("a", {"track": "a", "terms": [{"allow": ["GB"]}]})
    g = gate(clock, license_max_age=0.0)
    assert await check(g, node, "/tracks/a/master.m3u8", GB) is None
    node.licence("a", {"track": "b", "terms": [{"allow": ["WW"]}]})  # someone copied b's record over a's
    assert await check(g, node, "/tracks/a/master.m3u8", GB) is None
    assert reason(await check(g, node, "/tracks/a/master.m3u8", SE)) == "not licensed in territory"


async def test_unknown_allowed_by_policy_and_registered_country_default() -> None:
    node, clock = StandIn(), Clock()
    node.licence("a", {"track": "a", "terms": [{"allow": ["US"]}]})
    assert reason(await check(gate(clock), node, "/tracks/a/master.m3u8", "8.8.8.8")) == "unknown territory"
    assert await check(gate(clock, unknown="allow"), node, "/tracks/a/master.m3u8", "8.8.8.8") is None
    # 81.2.69.160 is located in GB, registered in the US
    assert await check(gate(clock, country_field="registered_country"), node, "/tracks/a/master.m3u8", GB) is None


async def test_metrics_by_result_reason_and_country() -> None:
    node, clock, registry = StandIn(), Clock(), CollectorRegistry()
    node.licence("a", {"track": "a", "terms": [{"allow": ["GB"]}]})
    g = gate(clock, registry)
    await check(g, node, "/tracks/a/master.m3u8", GB)
    await check(g, node, "/tracks/a/master.m3u8", SE)
    await check(g, node, "/tracks/a/master.m3u8", "8.8.8.8")
    value = registry.get_sample_value
    assert value("legato_geo_decisions_total", {"result": "allowed", "reason": "licensed", "country": "GB"}) == 1
    assert value("legato_geo_decisions_total",
                 {"result": "refused", "reason": "not licensed in territory", "country": "SE"}) == 1
    assert value("legato_geo_decisions_total",
                 {"result": "refused", "reason": "unknown territory", "country": "unknown"}) == 1


@pytest.mark.parametrize("geo", [{"trusted_proxies": ("10.0.0.0/99",)}, {"loopback_country": "UK"},
                                 {"unknown": "maybe"}, {"proxy_header": "x-real-ip"}, {"country_field": "city"}])
def test_bad_geo_config(geo: dict[str, object]) -> None:
    with pytest.raises(ValueError) as err:
        GeoConfig(**geo)  # type: ignore[arg-type]
    assert next(iter(geo)) in str(err.value)
