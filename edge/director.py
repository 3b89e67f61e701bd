"""``legato director``: the players' entry point, keeping each session on one edge.

A player asks the director for a manifest (``/tracks/{track}/master.m3u8`` or
``/tracks/{track}/manifest.mpd``, with ``?token=…``); the director answers
``302 Found`` with ``Location:`` the chosen edge's absolute URL, the same
path and the same query (the token rides along), and ``Cache-Control:
private, no-store``.  Players resolve the manifest's relative URIs against
the URL they were redirected to, so everything after the manifest (media
playlists, keys, segments) goes to the edge directly.  Any other path is a
404 saying so; ``/healthz`` and ``/metrics`` are the director's own.

Which edge (the pure ``Director`` below; ``now`` is an argument):

1. **Session id**: the ``sid`` of the request's token, verified with the
   public keys of ``[tokens]`` (drm.tokens.Verifier, as the edge: signature,
   validity, track of the path, bound address).  Without a token, the client address
   stands for the session (an IPv6 client by its /64: privacy addresses
   change within it).  A token that is present but invalid is **refused
   here** with the edge's answer (401/403, ``{"error": reason}``,
   ``WWW-Authenticate`` on 401) rather than redirected: the session id of a
   token nobody verified could be chosen by anyone to aim at one edge, and a
   player learns at once, without a wasted round trip, that it needs a new
   token.  A *missing* token is not refused: whether a track needs one is
   the edge's decision (``[tokens] required``), and the director is not a
   gate.  With no public keys configured, tokens are not read at all and
   every session is its client address.
2. **Region**: the client address (geo.client: the socket peer, or what the
   trusted proxies of ``[geo] trusted_proxies`` forwarded) gives a country
   (geo.country, ``[geo] database``; loopback clients get ``[geo]
   loopback_country``), the ``[regions]`` table maps it to a region, and
   ``default_region`` takes everyone else (unknown address, unmapped
   country, no database).
3. **Edge**: consistent hashing with bounded loads (cache.ring; ``hashing =
   "maglev"`` by default) of the session id over the region's edges: the
   first edge in the session's order that is healthy and whose load is below
   ``ceil((1 + load_epsilon) x mean)`` over the region's healthy edges (or
   below ``load_floor``: with only a few sessions in the window, 1.25x a
   small mean would move sessions on mere chance).  A
   region with no healthy edge borrows from all edges (counted as
   ``other-region``).

**Load model.**  An edge's load is the number of redirects the director sent
it in the last ``load_window`` seconds (counted in 30 time slices, so the
window is exact to 1/30).  A redirect starts a play that keeps the player on
that edge for about a track, so this counts the plays each edge is serving,
approximately and without any memory per session: a session playing on
counts once per track, and a session id shared by many players (an address
behind a NAT, without tokens) weighs as many players, which is what lets
bounded loads spill it over several edges instead of sinking one.

**Stickiness.**  Nothing is remembered per session: the same session id
gets the same edge as long as that edge is healthy and not over the load
bound, from any worker and any director with the same edge list.  When an
edge fails, only its sessions move, each to its next choice (for ``maglev``
the rendezvous order over the other edges, so they spread evenly); when it
comes back, they return.  Balance without hot keys is 1.02 max/mean at 100
edges (tests/cache/test_ring.py), so the bound moves sessions only while a
hot key is pushing an edge to 1.25x.  With ``workers`` > 1 each worker counts
its own redirects: loads are per worker (a share of the traffic each), which
decides only who spills when an edge is at the bound.

**Health**: every worker probes each edge's ``/healthz`` every
``[health] interval``; ``fall`` consecutive failures (a timeout, a non-200)
take an edge out, a refused connection at once (nothing listens there), and
``rise`` consecutive 200s put it back.  The first round runs before the
director announces it is listening.

**Metrics**: ``legato_director_redirects_total{edge,region,choice}``
(choice: ``first``, ``failover``, ``spill``, ``other-region``),
``legato_director_refusals_total{reason}``, ``legato_director_edge_up{edge,region}``,
``legato_director_edge_load{edge}`` (summed over workers), plus every node's
request metrics.  Tokens are never logged or counted (the access log drops
the query).

SIGHUP re-reads the config file (edges, regions, keys, database); health
state is kept for edges whose name and URL did not change.  At scale the
same job is done by HAProxy (config/haproxy.cfg, README "Running the
director role at scale").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import os
import re
import sys
import time
import types
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import hdrs, web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cache.ring import RINGS, HashRing
from drm.config import TokensConfig, load_public_keys
from drm.tokens import TokenError, Verifier
from geo.client import LOOPBACK, IPAddress, client_address, is_trusted
from geo.config import GeoConfig
from geo.licence import ISO_CODES
from legato import __version__, urls
from legato import config as cfg
from legato import http as h
from legato.cli import HelpFormatter
from legato.config import section, setting
from legato.logs import (
    KIND_KEY,
    Observer,
    RequestMetrics,
    begin,
    configure_logging,
    render_metrics,
)
from legato.server import OBSERVERS, RELOAD, ServeOptions, parse_listen, serve
from legato.web import ALLOW, base_headers
from legato.web import error as web_error
from legato.web import options as web_options

log = logging.getLogger("legato.director")

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""Edge and region names (they are metrics labels)."""
TOKEN_PARAM = "token"
MANIFESTS = frozenset({urls.Kind.MASTER, urls.Kind.MPD})
QUERY_RE = re.compile(r"[!-~]*")  # visible ASCII: what a query we pass on in Location may hold
LOAD_SLICES = 30

FIRST, FAILOVER, SPILL, OTHER_REGION = "first", "failover", "spill", "other-region"
NOT_A_MANIFEST = ("the director only redirects manifest requests (/tracks/{track}/master.m3u8, "
                  "/tracks/{track}/manifest.mpd); everything else comes from the edge it sends you to")


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class EdgeEntry:
    name: str = setting("", "edge name: its identity on the ring (keep it when the URL changes)")
    url: str = setting("", "the edge's absolute base URL players are sent to, e.g. https://edge-1.example.net")
    region: str = setting("", "region the edge serves; empty: default_region")

    def __post_init__(self) -> None:
        if not NAME_RE.fullmatch(self.name):
            raise ValueError(f"name {self.name!r} must match {NAME_RE.pattern}")
        check_url(self.url)
        if self.region and not NAME_RE.fullmatch(self.region):
            raise ValueError(f"region {self.region!r} must match {NAME_RE.pattern}")


@dataclass(frozen=True)
class HealthConfig:
    interval: float = setting(1.0, "seconds between probes of each edge's /healthz")
    timeout: float = setting(0.5, "seconds a probe may take")
    fall: int = setting(2, "consecutive failed probes that take an edge out (a refused connection: at once)")
    rise: int = setting(2, "consecutive good probes that put an edge back")

    def __post_init__(self) -> None:
        if not 0.01 <= self.interval <= 3600:
            raise ValueError(f"interval {self.interval} outside 0.01..3600")
        if not 0.01 <= self.timeout <= 60:
            raise ValueError(f"timeout {self.timeout} outside 0.01..60")
        for name in ("fall", "rise"):
            if not 1 <= getattr(self, name) <= 100:
                raise ValueError(f"{name} {getattr(self, name)} outside 1..100")


@dataclass(frozen=True)
class DirectorConfig:
    listen: str = setting("127.0.0.1:8090", "HOST:PORT to listen on (port 0 picks a free port)")
    workers: int = setting(1, "worker processes sharing the port with SO_REUSEPORT")
    access_log: bool = setting(True, "one JSON access-log line per request on stderr (query, hence token, left out)")
    cors_origin: str = setting("*", "Access-Control-Allow-Origin for browser players: '*', one origin, or a "
                               "comma-separated list")
    shutdown_timeout: float = setting(10.0, "seconds to let in-flight requests finish after SIGTERM/SIGINT")
    hashing: str = setting("maglev", f"how sessions are ordered over edges: {', '.join(sorted(RINGS))}")
    load_epsilon: float = setting(0.25, "bounded loads: an edge takes new sessions while below "
                                  "(1 + load_epsilon) x the mean load of its region's healthy edges")
    load_window: float = setting(300.0, "seconds a redirect counts towards its edge's load (about a track)")
    load_floor: int = setting(100, "loads below this never count as over the bound: with few sessions in the "
                              "window, 1.25x a small mean would move sessions on mere chance")
    max_query: int = setting(2048, "longest query string (bytes) passed on; longer is 414")
    default_region: str = setting("default", "region of clients whose country is unknown or in no region, and "
                                  "of edges that name none")
    regions: Mapping[str, tuple[str, ...]] = setting(
        types.MappingProxyType({}), "region -> ISO 3166-1 alpha-2 country codes it serves, e.g. eu = ['GB', 'DE']")
    edges: tuple[EdgeEntry, ...] = setting((), "the edges ([[edges]] tables: name, url, region)")
    health: HealthConfig = section(HealthConfig, "active health checks of the edges")  # noqa: RUF009
    tokens: TokensConfig = section(TokensConfig, "session tokens: public_keys to read session ids from "  # noqa: RUF009
                                   "(the other keys are the edge's)")
    geo: GeoConfig = section(GeoConfig, "client address behind proxies and the country database "  # noqa: RUF009
                             "(database, trusted_proxies, proxy_header, country_field, loopback_country, "
                             "poll_interval; the licence keys are the edge's)")

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= 256:
            raise ValueError(f"workers {self.workers} outside 1..256")
        parse_listen(self.listen)
        h.parse_origins(self.cors_origin)
        if self.shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout {self.shutdown_timeout} is negative")
        if self.hashing not in RINGS:
            raise ValueError(f"hashing {self.hashing!r} is none of {', '.join(sorted(RINGS))}")
        if not (0 <= self.load_epsilon <= 10):
            raise ValueError(f"load_epsilon {self.load_epsilon} outside 0..10")
        if not 1 <= self.load_window <= 86_400:
            raise ValueError(f"load_window {self.load_window} outside 1..86400")
        if not 0 <= self.load_floor <= 10**9:
            raise ValueError(f"load_floor {self.load_floor} outside 0..1000000000")
        if not 0 <= self.max_query <= 65_536:
            raise ValueError(f"max_query {self.max_query} outside 0..65536")
        if not NAME_RE.fullmatch(self.default_region):
            raise ValueError(f"default_region {self.default_region!r} must match {NAME_RE.pattern}")
        country_map(self.regions)
        names = [e.name for e in self.edges]
        if len(set(names)) != len(names):
            raise ValueError(f"edges: duplicate names in {names}")


def check_url(url: str) -> str:
    """An edge base URL: http(s), a host, optional port and path prefix; returned without a trailing '/'."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"url {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url {url!r} is not an absolute http(s) URL")
    if parts.username is not None or parts.query or parts.fragment or not QUERY_RE.fullmatch(url):
        raise ValueError(f"url {url!r}: no user, query, fragment or spaces in an edge URL")
    return url.rstrip("/")


def country_map(regions: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """``[regions]`` (region -> countries) as country -> region; ValueError names the bad entry."""
    out: dict[str, str] = {}
    for region, countries in regions.items():
        if not NAME_RE.fullmatch(region):
            raise ValueError(f"regions: region name {region!r} must match {NAME_RE.pattern}")
        for code in countries:
            if code not in ISO_CODES:
                raise ValueError(f"regions.{region}: {code!r} is not an ISO 3166-1 alpha-2 country code")
            if code in out and out[code] != region:
                raise ValueError(f"regions: {code} is in both {out[code]!r} and {region!r}")
            out[code] = region
    return out


def parse_edge(text: str) -> EdgeEntry:
    """``NAME=URL[@REGION]`` (the --edge flag) -> EdgeEntry; ValueError says what is wrong."""
    name, eq, rest = text.partition("=")
    if not eq:
        raise ValueError(f"--edge {text!r}: expected NAME=URL[@REGION]")
    url, at, region = rest.rpartition("@")
    if not at or "/" in region or ":" in region:
        url, region = rest, ""
    try:
        return EdgeEntry(name=name, url=url, region=region)
    except ValueError as exc:
        raise ValueError(f"--edge {text!r}: {exc}") from None


# --------------------------------------------------------------------------- pure core


@dataclass(frozen=True, slots=True)
class Edge:
    name: str
    url: str  # base URL, no trailing '/'
    region: str


@dataclass(frozen=True, slots=True)
class Choice:
    edge: Edge
    region: str  # the client's region
    how: str  # FIRST, FAILOVER, SPILL or OTHER_REGION


class RiseFall:
    """One edge's health: down after ``fall`` failures in a row (or one definitive), up after ``rise`` successes.

    Before the first probe an edge counts as up; the first probe decides at once.
    """

    __slots__ = ("checked", "fall", "rise", "streak", "up")

    def __init__(self, rise: int, fall: int) -> None:
        self.rise, self.fall = rise, fall
        self.up, self.checked, self.streak = True, False, 0

    def observe(self, ok: bool, *, definitive: bool = False) -> bool:
        """Record one probe; True when the edge changed state."""
        if not self.checked:
            self.checked, self.streak = True, 0
            changed, self.up = self.up != ok, ok
            return changed
        if ok == self.up:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak >= (self.rise if ok else self.fall) or (definitive and not ok):
            self.up, self.streak = ok, 0
            return True
        return False


class RecentLoads:
    """Redirects per edge in the last ``window`` seconds, counted in ``slices`` time slices."""

    def __init__(self, window: float, slices: int = LOAD_SLICES) -> None:
        self.width = window / slices
        self.slices = slices
        self.loads: Counter[str] = Counter()
        self._recent: deque[tuple[int, Counter[str]]] = deque()

    def expire(self, now: float) -> None:
        oldest = int(now // self.width) - self.slices  # slices up to this one have left the window
        while self._recent and self._recent[0][0] <= oldest:
            _, counts = self._recent.popleft()
            self.loads.subtract(counts)

    def add(self, edge: str, now: float) -> None:
        index = int(now // self.width)
        if not self._recent or self._recent[-1][0] != index:
            self._recent.append((index, Counter()))
        self._recent[-1][1][edge] += 1
        self.loads[edge] += 1


class Director:
    """Which edge a session goes to: one ring per region, health, recent loads (no I/O)."""

    def __init__(self, edges: Sequence[Edge], countries: Mapping[str, str], default_region: str, *,
                 hashing: str = "maglev", epsilon: float = 0.25, floor: int = 0, window: float = 300.0,
                 rise: int = 2, fall: int = 2) -> None:
        self.edges = {edge.name: edge for edge in edges}
        self.countries = dict(countries)
        self.default_region = default_region
        self.epsilon, self.floor = epsilon, floor
        make = RINGS[hashing]
        by_region: dict[str, list[str]] = {}
        for edge in edges:
            by_region.setdefault(edge.region, []).append(edge.name)
        self.rings: dict[str, HashRing] = {region: make(names) for region, names in by_region.items()}
        self.everywhere: HashRing = make(list(self.edges))
        self.health = {name: RiseFall(rise, fall) for name in self.edges}
        self.healthy: set[str] = set(self.edges)
        self.loads = RecentLoads(window)

    def region_of(self, country: str | None) -> str:
        return self.countries.get(country or "", self.default_region)

    def observe(self, name: str, ok: bool, *, definitive: bool = False) -> bool:
        """Feed one probe result; True when the edge went up or down."""
        changed = self.health[name].observe(ok, definitive=definitive)
        if changed:
            (self.healthy.add if ok else self.healthy.discard)(name)
        return changed

    def choose(self, session: str, region: str, now: float) -> Choice | None:
        """The edge for ``session`` of a client in ``region``, counted in its load; None if no edge is healthy."""
        self.loads.expire(now)
        loads, healthy = self.loads.loads, self.healthy
        ring = self.rings.get(region)
        name = None if ring is None else ring.pick(session, loads, healthy, self.epsilon, floor=self.floor)
        if ring is None or name is None:  # no edge of the region is up (or it has none): any edge
            name = self.everywhere.pick(session, loads, healthy, self.epsilon, floor=self.floor)
            if name is None:
                return None
            how = OTHER_REGION
        elif name == ring.primary(session):
            how = FIRST
        else:
            how = FAILOVER if name == ring.first(session, healthy) else SPILL
        self.loads.add(name, now)
        return Choice(self.edges[name], region, how)


def address_session(addr: IPAddress | None) -> str:
    """The session id standing for a client without a token: its address (IPv6: its /64)."""
    if addr is None:
        return "unknown"
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def director_for(config: DirectorConfig) -> Director:
    edges = [Edge(e.name, check_url(e.url), e.region or config.default_region) for e in config.edges]
    return Director(edges, country_map(config.regions), config.default_region, hashing=config.hashing,
                    epsilon=config.load_epsilon, floor=config.load_floor, window=config.load_window,
                    rise=config.health.rise, fall=config.health.fall)


# --------------------------------------------------------------------------- I/O shell


class DirectorMetrics:
    def __init__(self) -> None:
        from prometheus_client import Counter as PromCounter
        from prometheus_client import Gauge

        self.requests = RequestMetrics("director")
        registry = self.requests.registry
        self.redirects = PromCounter("legato_director_redirects", "Manifest requests redirected, by edge, client "
                                     "region and how the edge was chosen", ("edge", "region", "choice"),
                                     registry=registry)
        self.refusals = PromCounter("legato_director_refusals", "Manifest requests refused, by reason", ("reason",),
                                    registry=registry)
        self.up = Gauge("legato_director_edge_up", "1 while an edge passes its health checks", ("edge", "region"),
                        registry=registry, multiprocess_mode="livemin")
        self.load = Gauge("legato_director_edge_load", "Redirects to an edge within load_window (the bounded-load "
                          "measure)", ("edge",), registry=registry, multiprocess_mode="livesum")
        self._redirects: dict[tuple[str, str, str], Any] = {}

    def redirected(self, choice: Choice) -> None:
        key = (choice.edge.name, choice.region, choice.how)
        child = self._redirects.get(key)
        if child is None:
            child = self._redirects[key] = self.redirects.labels(*key)
        child.inc()


@dataclass
class Resources:
    """What a worker loads from the config once and swaps on reload."""

    config: DirectorConfig
    core: Director
    public_keys: Mapping[str, Ed25519PublicKey]
    verifier: Verifier  # the edge's: a token's signature is checked once, time/track/address every time
    countries: Any  # geo.country.CountryDB | None
    trusted: Any  # geo.client.Networks
    origins: tuple[str, ...]


def load_resources(config: DirectorConfig) -> Resources:
    """Keys and the country database for ``config``; ConfigError / GeoDBError name the file."""
    keys = load_public_keys(config.tokens)
    countries = None
    if config.geo.enabled:
        from geo.country import CountryDB

        try:
            path = config.geo.database_path()
        except ValueError as exc:
            raise cfg.ConfigError(f"[geo] database: {exc}") from None
        countries = CountryDB(path, poll_interval=config.geo.poll_interval)
    return Resources(config, director_for(config), keys, Verifier(keys, skew=config.tokens.skew), countries,
                     config.geo.networks(), h.parse_origins(config.cors_origin))


class DirectorNode:
    """One worker's director: the handler, the health probes, reload."""

    def __init__(self, res: Resources, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, reload: Callable[[], Resources] | None = None) -> None:
        self.res = res
        self.clock, self.wall = clock, wall
        self._reload = reload
        self.metrics = DirectorMetrics()
        self._session: aiohttp.ClientSession | None = None
        self._probes: asyncio.Task[None] | None = None
        self._set_gauges()

    # --- lifecycle ---------------------------------------------------------------
    async def start(self, _app: web.Application) -> None:
        timeout = aiohttp.ClientTimeout(total=self.res.config.health.timeout)
        self._session = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=64))
        await self.probe_all()  # health is known before the node says it listens
        self._probes = asyncio.create_task(self._probe_loop(), name="director-health")

    async def close(self, _app: web.Application) -> None:
        if self._probes is not None:
            self._probes.cancel()
            await asyncio.gather(self._probes, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self.res.countries is not None:
            self.res.countries.close()

    async def reload(self) -> None:
        """SIGHUP: the config again.  Edges with the same name, URL and region keep their health; new
        ones are probed before the new config takes over."""
        if self._reload is None:
            return
        try:
            new = self._reload()
        except Exception as exc:  # noqa: BLE001 - a bad file keeps the running config
            log.error("reload failed, keeping the running config: %s", exc)
            return
        old = self.res
        fresh = []
        for name, edge in new.core.edges.items():
            if old.core.edges.get(name) != edge:
                fresh.append(edge)
                continue
            was, now = old.core.health[name], new.core.health[name]
            now.up, now.checked, now.streak = was.up, was.checked, was.streak
            if not was.up:
                new.core.healthy.discard(name)
        await asyncio.gather(*(self.probe(edge, new.core) for edge in fresh))
        for name, edge in old.core.edges.items():
            if new.core.edges.get(name) != edge:
                with contextlib.suppress(KeyError):
                    self.metrics.up.remove(name, edge.region)
                    self.metrics.load.remove(name)
        self.res = new
        if old.countries is not None:
            old.countries.close()
        self._set_gauges()
        log.info("reloaded: %d edges in %d regions", len(new.core.edges), len(new.core.rings))

    # --- health -------------------------------------------------------------------
    async def probe(self, edge: Edge, core: Director) -> None:
        assert self._session is not None
        definitive = False
        try:
            async with self._session.get(edge.url + "/healthz", allow_redirects=False) as resp:
                await resp.read()
                ok = resp.status == 200
        except aiohttp.ClientConnectorError as exc:
            ok, definitive = False, isinstance(exc.os_error, ConnectionRefusedError)
        except (TimeoutError, aiohttp.ClientError, OSError):
            ok = False
        if core.observe(edge.name, ok, definitive=definitive):
            log.warning("edge %s (%s) is %s", edge.name, edge.url, "up" if ok else "DOWN")

    async def probe_all(self) -> None:
        core = self.res.core
        await asyncio.gather(*(self.probe(edge, core) for edge in core.edges.values()))
        self._set_gauges()

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.res.config.health.interval)
            await self.probe_all()

    def _set_gauges(self) -> None:
        core = self.res.core
        core.loads.expire(self.clock())
        for name, edge in core.edges.items():
            self.metrics.up.labels(name, edge.region).set(1 if name in core.healthy else 0)
            self.metrics.load.labels(name).set(core.loads.loads.get(name, 0))

    # --- requests -----------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        begin(request)
        raw_path, _, query = request.raw_path.partition("?")
        try:
            route = urls.parse(raw_path)
        except urls.BadPath as exc:
            return self.error(request, 400, exc.reason)
        if route is None:
            return self.error(request, 404, NOT_A_MANIFEST)
        request[KIND_KEY] = route.kind.value
        method = request.method
        if method == hdrs.METH_OPTIONS:
            return web_options(request, self.res.origins)
        if method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            return self.error(request, 405, f"{method} not allowed; use GET or HEAD", Allow=ALLOW)
        if route.kind is urls.Kind.METRICS:
            return self.metrics_page(request)
        if route.kind is urls.Kind.HEALTHZ:
            return self.healthz(request)
        if route.kind not in MANIFESTS:
            return self.error(request, 404, NOT_A_MANIFEST)
        return self.redirect(request, route, query)

    def redirect(self, request: web.Request, route: urls.Route, query: str) -> web.Response:
        res = self.res
        if len(query) > res.config.max_query:
            return self.error(request, 414, f"query longer than {res.config.max_query} bytes")
        if not QUERY_RE.fullmatch(query):
            return self.error(request, 400, "query holds characters other than visible ASCII")
        addr = client_address(request.remote, request.headers, res.trusted,
                              header=res.config.geo.proxy_header.lower())
        session = None
        if res.public_keys:
            tokens = request.query.getall(TOKEN_PARAM, [])
            if len(tokens) > 1:
                return self.refuse(request, 401, "malformed")
            if tokens:
                try:
                    claims = res.verifier.verify(tokens[0], now=self.wall(), track=route.track,
                                                 client_ip=str(addr) if addr is not None else "")
                except TokenError as exc:
                    return self.refuse(request, exc.status, exc.reason)
                session = claims.session
        if session is None:
            session = address_session(addr)
        now = self.clock()
        choice = res.core.choose(session, res.core.region_of(self.country(addr, now)), now)
        if choice is None:
            return self.refuse(request, 503, "no healthy edge",
                               {"Retry-After": str(max(1, math.ceil(res.config.health.interval)))})
        self.metrics.redirected(choice)
        headers = base_headers(request, res.origins)
        headers["Location"] = f"{choice.edge.url}{route.path}{'?' if query else ''}{query}"
        headers["Cache-Control"] = "private, no-store"
        return web.Response(status=302, headers=headers)

    def country(self, addr: IPAddress | None, now: float) -> str | None:
        geo, db = self.res.config.geo, self.res.countries
        if addr is None:
            return None
        if geo.loopback_country and is_trusted(addr, LOOPBACK):
            return geo.loopback_country
        if db is None:
            return None
        db.reload_if_changed(now)
        info = db.lookup(addr)
        return info.field(geo.country_field) if info is not None else None

    def refuse(self, request: web.Request, status: int, reason: str,
               extra: Mapping[str, str] | None = None) -> web.Response:
        """``{"error": reason}`` as the edge refuses (never echoing the token), counted by reason."""
        self.metrics.refusals.labels(reason).inc()
        headers = base_headers(request, self.res.origins)
        headers.update({"Content-Type": "application/json", "Cache-Control": "no-store"})
        if status == 401:  # RFC 9110 §15.5.2: a 401 names the scheme
            headers["WWW-Authenticate"] = f'Bearer realm="legato", error="invalid_token", error_description="{reason}"'
        headers.update(extra or {})
        return web.Response(status=status, text=json.dumps({"error": reason}) + "\n", headers=headers)

    def error(self, request: web.Request, status: int, reason: str, **extra: str) -> web.Response:
        return web_error(request, self.res.origins, status, reason, **extra)

    def healthz(self, request: web.Request) -> web.Response:
        """200 while some edge is healthy (503 otherwise), with every edge's state and load."""
        core = self.res.core
        core.loads.expire(self.clock())
        edges = [{"name": e.name, "url": e.url, "region": e.region, "healthy": e.name in core.healthy,
                  "load": core.loads.loads.get(e.name, 0)} for e in core.edges.values()]
        live = bool(core.healthy)
        body = {"status": "ok" if live else "no healthy edge", "role": "director", "version": __version__,
                "pid": os.getpid(), "default_region": core.default_region, "edges": edges}
        headers = base_headers(request, self.res.origins)
        headers.update({"Content-Type": h.content_type(urls.Kind.HEALTHZ), "Cache-Control": "no-store"})
        return web.Response(status=200 if live else 503, body=json.dumps(body).encode(), headers=headers)

    def metrics_page(self, request: web.Request) -> web.Response:
        self._set_gauges()
        headers = base_headers(request, self.res.origins)
        headers.update({"Content-Type": h.content_type(urls.Kind.METRICS), "Cache-Control": "no-store"})
        return web.Response(body=render_metrics(self.metrics.requests.registry), headers=headers)


DIRECTOR: web.AppKey[DirectorNode] = web.AppKey("director", DirectorNode)


def create_app(res: Resources, *, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
               reload: Callable[[], Resources] | None = None) -> web.Application:
    """The director's aiohttp app (one per worker); probes start with the app."""
    node = DirectorNode(res, clock=clock, wall=wall, reload=reload)
    app = web.Application()
    app[DIRECTOR] = node
    observers: tuple[Observer, ...] = (node.metrics.requests,)
    app[OBSERVERS] = observers
    app[RELOAD] = node.reload
    app.on_startup.append(node.start)
    app.on_cleanup.append(node.close)
    app.router.add_route("*", r"/{tail:[\s\S]*}", node.handle)
    return app


# --------------------------------------------------------------------------- command line

_DEFAULTS = DirectorConfig()


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``director`` subcommand."""
    p = subparsers.add_parser(
        "director", help="run the director: sticky 302 redirects of sessions to edges",
        formatter_class=HelpFormatter,
        description="Redirect each manifest request (302) to one edge, chosen by consistent hashing with bounded "
        "loads of the session id (from the verified ?token=, else the client address) over the healthy edges of "
        "the client's region (country from [geo] database, mapped by [regions]).\n\n"
        "Settings are read from --config (TOML, see config/director.toml); flags override the file.\n"
        "Once listening, prints one line to stdout: 'director listening on http://HOST:PORT'.\n"
        "SIGHUP re-reads the config; SIGTERM/SIGINT finish in-flight requests and exit 0.\n"
        "At scale, run HAProxy instead (config/haproxy.cfg).",
    )
    p.add_argument("--config", type=Path, metavar="FILE", default=None,
                   help="TOML config file (see config/director.toml); built-in defaults when omitted")
    p.add_argument("--listen", metavar="HOST:PORT", default=None,
                   help=f"address to listen on, port 0 for any free port (default from config: {_DEFAULTS.listen})")
    p.add_argument("--edge", metavar="NAME=URL[@REGION]", action="append", default=None,
                   help="an edge to send players to, e.g. edge-1=http://10.0.0.5:8091@eu; repeat for each edge "
                        "(replaces the config's [[edges]])")
    p.add_argument("--default-region", metavar="NAME", default=None,
                   help=f"region of unknown or unmapped clients (default from config: {_DEFAULTS.default_region})")
    p.add_argument("--workers", type=int, metavar="N", default=None,
                   help=f"worker processes sharing the port via SO_REUSEPORT (default from config: {_DEFAULTS.workers})")
    p.add_argument("--no-access-log", dest="access_log", action="store_const", const=False, default=None,
                   help="do not write the JSON access log to stderr")
    p.set_defaults(func=run)


def load_config(args: argparse.Namespace) -> DirectorConfig:
    """The config file (or defaults) with the flags applied; ConfigError names what is wrong."""
    config = cfg.load(DirectorConfig, args.config) if args.config is not None else DirectorConfig()
    try:
        edges = tuple(parse_edge(text) for text in args.edge) if args.edge else None
        config = cfg.replace(config, listen=args.listen, workers=args.workers, access_log=args.access_log,
                             default_region=args.default_region, edges=edges)
    except ValueError as exc:
        raise cfg.ConfigError(f"command line: {exc}") from None
    if not config.edges:
        raise cfg.ConfigError("no edges: list them as [[edges]] in the config or with --edge NAME=URL[@REGION]")
    return config


def run(args: argparse.Namespace) -> int:
    """Entry point of ``legato director``; returns the exit status."""
    from geo.country import GeoDBError

    configure_logging()

    def reload() -> Resources:
        return load_resources(load_config(args))

    try:
        config = load_config(args)
        res = load_resources(config)
    except (cfg.ConfigError, GeoDBError) as exc:
        print(f"legato director: {exc}", file=sys.stderr)
        return 2
    if not res.public_keys:
        log.warning("no [tokens] public_keys: sessions are identified by client address only")
    options = ServeOptions(role="director", listen=config.listen, workers=config.workers,
                           access_log=config.access_log, shutdown_timeout=config.shutdown_timeout)
    try:
        return serve(options, lambda: create_app(res, reload=reload))
    except OSError as exc:
        print(f"legato director: cannot listen on {config.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        if res.countries is not None:
            with contextlib.suppress(Exception):
                res.countries.close()
