"""The licence gate: territory and window checks before anything decryptable.

Installed on an edge (edge/app.py) when ``[geo] database`` is set.  For a
manifest, media playlist, key or ClearKey licence request it finds

* the **track(s)**: from the path (``/tracks/{track}/...``), or for keys
  and ClearKey licences (no track in the path) from the verified token
  claims the token gate put on the request (``edge.gates.CLAIMS_KEY``); for
  a token naming several tracks, every one must be licensed; without claims a key request is
  passed on (origin checks that the key id belongs to a track of the token);
* the **client's address** (geo.client: socket peer, or the forwarding
  header when the peer is a trusted proxy) and its **country**
  (geo.country; loopback clients get ``loopback_country`` when set);
* the **licence record** ``/licenses/{track}.json``, read through this
  node's own pull-through engine (so it is cached for origin's
  ``license_max_age`` and purgeable), parsed once per worker and reused for
  ``[geo] license_max_age`` seconds.  A record that fails validation is
  logged and the last good one for that track stays in force; with none,
  the track is refused rather than opened to everyone.  A track without a
  record is refused too (``missing = "deny"``), unless it does not exist at
  all (no ``track.json``): then the engine's 404 stands;

and asks geo.licence.decide.  A refusal is HTTP 451 (RFC 7725) with a JSON
body ``{"reason", "country", "track", "replacement"?}``, a
``Link: </licenses/{track}.json>; rel="blocked-by"`` header and
``Cache-Control: private``.  Segments are never checked here: they are
encrypted, cacheable and shared by everyone; what makes them playable (keys,
manifests) is.

Decisions are counted in ``legato_geo_decisions_total{result,reason,country}``.
The databases are re-read when replaced on disk (polled at most every
``poll_interval`` s from the request path: one stat) and on SIGHUP
(``reload``).
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import xxhash
from aiohttp import web

from edge.gates import CLAIMS_KEY
from geo.client import LOOPBACK, client_address, is_trusted
from geo.config import GeoConfig
from geo.country import CountryDB, CountryInfo
from geo.licence import Decision, Licence, LicenceError, Policy, decide, deciding_field
from legato import urls
from legato.web import base_headers

log = logging.getLogger("legato.geo")

CHECKED = frozenset({urls.Kind.MASTER, urls.Kind.MPD, urls.Kind.MEDIA_PLAYLIST, urls.Kind.KEY,
                     urls.Kind.CLEARKEY})
MAX_LICENCES = 10_000
"""Parsed licences kept per worker (least recently used go first)."""
NO_LICENCE = "no licence record"
BAD_LICENCE = "licence record invalid"


class _Memo:
    __slots__ = ("digest", "licence", "read_at")

    def __init__(self, licence: Licence | None, digest: int, read_at: float) -> None:
        self.licence, self.digest, self.read_at = licence, digest, read_at


INVALID: Any = object()
"""``licence()`` answer for a track whose only record is invalid."""


class _Unavailable(Exception):
    """The licence record cannot be read now and no earlier copy is known."""


class GeoGate:
    """The gate (see the module docstring); one per worker."""

    kinds = CHECKED

    def __init__(self, config: GeoConfig, db: CountryDB, *, registry: Any = None, node_name: str = "edge",
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self.node_name = node_name
        self._configure(config)
        self._memo: OrderedDict[str, _Memo] = OrderedDict()
        self._bad: dict[str, int] = {}
        self._origins: tuple[str, ...] = ("*",)
        self.decisions = _decisions_counter(registry)

    @classmethod
    def from_config(cls, config: GeoConfig, **kw: Any) -> GeoGate | None:
        """The gate for ``config``, or None when ``[geo] database`` is not set.

        Raises GeoDBError (a broken database: the node must not start) or
        ValueError (``bundled`` without the package).
        """
        if not config.enabled:
            return None
        db = CountryDB(config.database_path(), config.anonymous_database or None,
                       poll_interval=config.poll_interval)
        return cls(config, db, **kw)

    def _configure(self, config: GeoConfig) -> None:
        self.config = config
        self.networks = config.networks()
        self.header = config.proxy_header.lower()
        self.policy = Policy(unknown=config.unknown, country_field=config.country_field)

    def reconfigure(self, config: GeoConfig) -> None:
        """Apply a reloaded ``[geo]`` section (SIGHUP): policy at once, databases re-read."""
        self._configure(config)
        if (str(config.database_path()), config.anonymous_database or None) != (
                str(self.db.path), str(self.db.anonymous_path) if self.db.anonymous_path else None):
            try:
                new = CountryDB(config.database_path(), config.anonymous_database or None,
                                poll_interval=config.poll_interval)
            except Exception as exc:  # noqa: BLE001 - keep serving with the database we have
                log.error("geo: new database refused, keeping %s: %s", self.db.path, exc)
                return
            old, self.db = self.db, new
            old.close()
        else:
            self.db.reload()

    def reload(self) -> None:
        """SIGHUP: re-read the database files (a bad one is logged, the old kept)."""
        self.db.reload()

    def close(self) -> None:
        self.db.close()

    # --- the check -------------------------------------------------------------------
    async def check(self, request: web.Request, route: urls.Route, node: Any) -> web.StreamResponse | None:
        now = self.clock()
        self._origins = getattr(node, "origins", ("*",))
        self.db.reload_if_changed(now)
        if route.track is not None:
            tracks: tuple[str, ...] = (route.track,)
        else:
            claims = request.get(CLAIMS_KEY)
            tracks = tuple(getattr(claims, "tracks", ()) or ())
            if not tracks:
                return None  # a key without verified claims: origin checks key ownership
        info = self.where(request)
        for track in tracks:
            try:
                licence = await self.licence(track, node, now)
            except _Unavailable as exc:
                self._count(False, "licence unavailable", info, None)
                return self._error(request, 503, f"licence record of {track} unavailable: {exc}")
            if licence is None:
                if self.config.missing == "allow":
                    self._count(True, NO_LICENCE, info, None)
                    continue
                if not await self._track_exists(track, node):
                    continue  # no licence because no track: the engine answers 404
                decision = Decision(False, NO_LICENCE, info.country if info else None)
            elif licence is INVALID:
                decision = Decision(False, BAD_LICENCE, info.country if info else None)
            else:
                country = info.field(deciding_field(licence, self.policy)) if info else None
                decision = decide(licence, country, now, self.policy, anonymous=bool(info and info.is_anonymous))
            self._count(decision.allowed, decision.reason, info, decision.country)
            if not decision.allowed:
                return self.refusal(request, route, track, decision)
        return None

    def where(self, request: web.Request) -> CountryInfo | None:
        """What is known of the client's location."""
        ip = client_address(request.remote, request.headers, self.networks, header=self.header)
        if ip is None:
            return None
        if self.config.loopback_country and is_trusted(ip, LOOPBACK):
            code = self.config.loopback_country
            return CountryInfo(code, code, None)
        return self.db.lookup(ip)

    async def licence(self, track: str, node: Any, now: float) -> Any:
        """The track's ``Licence``; None when it has none, INVALID when it has only an invalid one."""
        memo = self._memo.get(track)
        if memo is not None and now - memo.read_at < self.config.license_max_age:
            self._memo.move_to_end(track)
            return memo.licence
        try:
            data = await node.fetch_bytes(urls.license_path(track))
        except Exception as exc:  # noqa: BLE001 - upstream trouble: the last good licence stands
            if memo is not None:
                log.warning("geo: licence of %s not refreshed (%s); the last good one stays in force", track, exc)
                memo.read_at = now
                return memo.licence
            raise _Unavailable(getattr(exc, "reason", None) or str(exc) or type(exc).__name__) from None
        if data is None:
            self._remember(track, None, 0, now)
            return None
        digest = xxhash.xxh3_64_intdigest(data)
        if memo is not None and memo.digest == digest:
            memo.read_at = now
            self._memo.move_to_end(track)
            return memo.licence
        try:
            licence = Licence.from_json(data, track=track)
        except LicenceError as exc:
            if self._bad.get(track) != digest:
                self._bad[track] = digest
                kept = "the last good one stays in force" if memo and memo.licence else "the track stays refused"
                log.error("geo: licence record /licenses/%s.json refused (%s); %s", track, exc.reason, kept)
            if memo is not None and memo.licence is not None:
                memo.read_at = now
                return memo.licence
            return INVALID
        self._bad.pop(track, None)
        self._remember(track, licence, digest, now)
        return licence

    @staticmethod
    async def _track_exists(track: str, node: Any) -> bool:
        try:
            return await node.fetch_bytes(urls.track_path(track, "track.json")) is not None
        except Exception:  # noqa: BLE001 - cannot tell: treat it as existing, so the refusal stands
            return True

    def _remember(self, track: str, licence: Licence | None, digest: int, now: float) -> None:
        self._memo[track] = _Memo(licence, digest, now)
        self._memo.move_to_end(track)
        while len(self._memo) > MAX_LICENCES:
            self._memo.popitem(last=False)

    # --- answers ---------------------------------------------------------------------
    def refusal(self, request: web.Request, route: urls.Route, track: str, decision: Decision) -> web.Response:
        """451 Unavailable For Legal Reasons (RFC 7725)."""
        body: dict[str, Any] = {"reason": decision.reason, "country": decision.country, "track": track}
        if decision.replacement:
            body["replacement"] = decision.replacement
            name = "manifest.mpd" if route.kind is urls.Kind.MPD else "master.m3u8"
            body["replacement_url"] = urls.track_path(decision.replacement, name)
        headers = base_headers(request, self._origins)
        headers.update({"Content-Type": "application/json", "Cache-Control": "private",
                        "Link": f'<{urls.license_path(track)}>; rel="blocked-by"',
                        "X-Cache": "MISS", "Via": f"1.1 {self.node_name}"})
        return web.Response(status=451, body=json.dumps(body).encode() + b"\n", headers=headers)

    def _error(self, request: web.Request, status: int, reason: str) -> web.Response:
        headers = base_headers(request, self._origins)
        headers.update({"Content-Type": "application/json", "Cache-Control": "no-store",
                        "Via": f"1.1 {self.node_name}"})
        return web.Response(status=status, body=json.dumps({"reason": reason}).encode() + b"\n", headers=headers)

    def _count(self, allowed: bool, reason: str, info: CountryInfo | None, country: str | None) -> None:
        if self.decisions is not None:
            label = country or (info.country if info else None) or "unknown"
            self.decisions.labels("allowed" if allowed else "refused", reason, label).inc()


_COUNTERS: dict[int, Any] = {}


def _decisions_counter(registry: Any) -> Any:
    """One counter per registry (a gate rebuilt on reload shares it)."""
    if registry is None:
        return None
    counter = _COUNTERS.get(id(registry))
    if counter is None:
        from prometheus_client import Counter

        counter = _COUNTERS[id(registry)] = Counter(
            "legato_geo_decisions", "Licence decisions at the edge by result, reason and country",
            ("result", "reason", "country"), registry=registry)
    return counter
