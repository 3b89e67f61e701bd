"""`legato bench load`: simulated players against a live topology.

Starts the topology of ``--topology FILE`` (origin, regionals, edges and its
director) on 127.0.0.1, or targets a running one (``--entry URL``, the
director or an edge), and runs ``--players`` asyncio players for
``--duration`` seconds; the run stops by itself.  Each player, listen after
listen:

1. gets a session token for the track (Ed25519, ``--signing-key``; none
   when the topology checks no tokens),
2. asks the entry URL for ``/tracks/{id}/master.m3u8?token=...`` and follows
   the director's 302 to its edge,
3. fetches the media playlist of the rendition its ABR rule picks, the key
   named by ``EXT-X-KEY`` (when protected) and ``init.mp4``,
4. fetches segments in play order, keeping 30-90 s buffered (``--buffer``),
   switching rendition by throughput and buffer (bench/player.py), with its
   own bandwidth and round-trip time (``--bandwidth``, ``--rtt``: each
   transfer is stretched to what that link would take), and skips (stop
   early) and seeks (jump ahead) as the trace model's listens do.

Tracks are chosen by Zipf popularity over the catalogue (``--tracks`` or the
store's tracks); a viral surge (``--surge-at``, ``--surge-for``) sends
``--surge-share`` of new listens to one track that no one played before.

Measured: start-up time (manifest request to first segment in hand) p50 /
p95 / p99, split by whether the first segment was an edge HIT ("cached") or
not; rebuffers and rebuffer ratio; bitrate switches; edge hit ratio from
``X-Cache``; regional hit ratio and origin fetches from the nodes' own
``/metrics`` before and after; errors by cause.  A status line shows progress.
Writes ``report.md``, ``results.json`` and PNG plots to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.player import (
    Abr,
    MediaPlaylist,
    Playback,
    PlaylistError,
    parse_master,
    parse_media,
    percentile,
)
from legato.cli import HelpFormatter

CACHED = "HIT"
PASS = "PASS"  # keys and licences: forwarded, never cacheable, so left out of hit ratios


@dataclass
class Listen:
    track: str
    startup: float | None = None
    cached: bool | None = None
    rebuffers: int = 0
    stalled: float = 0.0
    played: float = 0.0
    switches: int = 0
    segments: int = 0
    error: str | None = None


@dataclass
class Stats:
    """Everything the players measured (one per run)."""

    origin: float
    listens: list[Listen] = field(default_factory=list)
    x_cache: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    # per wall second since start: [cacheable requests, bytes, edge hits]
    series: dict[int, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))

    def request(self, now: float, size: int, x_cache: str) -> None:
        self.x_cache[x_cache] += 1
        row = self.series[int(now - self.origin)]
        row[0] += x_cache != PASS  # cacheable requests (the hit ratio's base)
        row[1] += size
        row[2] += x_cache == CACHED


@dataclass(frozen=True)
class Plan:
    """The players' shared settings."""

    entry: str
    tracks: tuple[str, ...]
    zipf_s: float
    duration: float
    buffer: tuple[float, float]
    bandwidth: tuple[float, float]  # log-normal median bits/s, sigma
    rtt: float
    skip_probability: float
    skip_mean: float
    seek_probability: float
    speed: float
    initial_estimate: float
    surge: tuple[float, float, float, str] | None  # at, for, share, track
    signer: Any = None  # (private key, key id) or None


class Refused(Exception):
    """A response the player could not use: the cause is the message."""


def _signer(path: Path | None, key_id: str) -> Any:
    if path is None:
        return None
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return load_pem_private_key(path.read_bytes(), password=None), key_id


def token_for(plan: Plan, user: str, track: str, now: float) -> str | None:
    if plan.signer is None:
        return None
    from drm import tokens

    key, key_id = plan.signer
    return tokens.issue(key, key_id, user=user, session=uuid.uuid4().hex, tracks=(track,), now=now, ttl=600)


def pick_track(plan: Plan, rng: random.Random, elapsed: float, weights: list[float]) -> str:
    if plan.surge is not None:
        at, length, share, track = plan.surge
        if at <= elapsed < at + length and rng.random() < share:
            return track
    return rng.choices(plan.tracks, weights)[0]


class Player:
    """One simulated listener (see the module docstring)."""

    def __init__(self, n: int, plan: Plan, stats: Stats, session: Any, seed: int) -> None:
        self.n, self.plan, self.stats, self.http = n, plan, stats, session
        self.rng = random.Random(seed)
        median, sigma = plan.bandwidth
        self.bandwidth = median * math.exp(self.rng.gauss(0, sigma))

    async def get(self, url: str, *, shape: bool = True) -> tuple[bytes, str, str]:
        """GET with this player's link shaping; (body, X-Cache, final URL)."""
        t0 = time.monotonic()
        async with self.http.get(url) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise Refused(f"HTTP {resp.status} for {_kind(url)}")
            x_cache = resp.headers.get("X-Cache", "-")
            final = str(resp.url)
        if shape:
            need = self.plan.rtt + len(body) * 8 / self.bandwidth
            spent = time.monotonic() - t0
            if need > spent:
                await asyncio.sleep(need - spent)
        self.stats.request(time.monotonic(), len(body), x_cache)
        return body, x_cache, final

    async def run(self, deadline: float, weights: list[float]) -> None:
        while time.monotonic() < deadline:
            track = pick_track(self.plan, self.rng, time.monotonic() - self.stats.origin, weights)
            listen = Listen(track)
            self.stats.listens.append(listen)
            try:
                await self.listen(listen, deadline)
            except asyncio.CancelledError:
                raise
            except Refused as exc:
                listen.error = str(exc)
            except (PlaylistError, ValueError, KeyError) as exc:
                listen.error = f"bad playlist: {exc}"
            except Exception as exc:  # noqa: BLE001 - aiohttp's transport errors: counted, the player goes on
                listen.error = type(exc).__name__
            if listen.error:
                self.stats.errors[listen.error] += 1
                await asyncio.sleep(1.0)

    @staticmethod
    async def _sleep(wait: float, play: Playback, stop_after: float, deadline: float) -> None:
        """Sleep ``wait`` wall seconds, but not past a skip or the end of the run."""
        now = time.monotonic()
        wait = min(wait, max(0.0, stop_after - play.play_seconds(now)), max(0.0, deadline - now))
        if wait > 0:
            await asyncio.sleep(wait)

    async def listen(self, listen: Listen, deadline: float) -> None:
        plan, rng = self.plan, self.rng
        t0 = time.monotonic()
        token = token_for(plan, f"player-{self.n}", listen.track, time.time())
        query = f"?token={token}" if token else ""
        body, _, master_url = await self.get(f"{plan.entry}/tracks/{listen.track}/master.m3u8{query}")
        variants = {v.rendition: v for v in parse_master(body.decode(), master_url)}
        abr = Abr([v.rendition for v in sorted(variants.values(), key=lambda v: v.bandwidth)],
                  estimate=plan.initial_estimate)
        playlists: dict[str, MediaPlaylist] = {}
        inits: set[str] = set()
        keys: set[str] = set()
        play = Playback(speed=plan.speed)
        stop_after = (rng.expovariate(1 / plan.skip_mean) if rng.random() < plan.skip_probability else math.inf)
        seek_at = rng.uniform(10, 60) if rng.random() < plan.seek_probability else math.inf
        low, high = plan.buffer
        n = 0
        while time.monotonic() < deadline:
            now = time.monotonic()
            if play.play_seconds(now) >= stop_after:
                break
            rendition = abr.choose(play.buffer(now) if play.started_at is not None else high)
            media = playlists.get(rendition)
            if media is None:
                text, _, url = await self.get(variants[rendition].url)
                media = playlists[rendition] = parse_media(text.decode(), url)
            if n >= len(media.segments):  # all fetched: hear the rest (or skip) before the next listen
                await self._sleep(play.buffer(now) / plan.speed, play, stop_after, deadline)
                break
            if media.key_url and media.key_url not in keys:
                key, _, _ = await self.get(media.key_url)
                if len(key) != 16:
                    raise Refused(f"key of {len(key)} bytes")
                keys.add(media.key_url)
            if media.init_url not in inits:
                await self.get(media.init_url)
                inits.add(media.init_url)
            seconds, url = media.segments[n]
            t_seg = time.monotonic()
            data, x_cache, _ = await self.get(url)
            now = time.monotonic()
            abr.observe(len(data), now - t_seg)
            play.arrived(seconds, now)
            listen.segments += 1
            if listen.startup is None:
                listen.startup, listen.cached = now - t0, x_cache == CACHED
            n += 1
            if play.play_seconds(now) >= seek_at and n < len(media.segments) - 2:
                play.seek(now)
                n = rng.randrange(n + 1, len(media.segments))
                seek_at = math.inf
                continue
            # keep between low and high seconds buffered: fill to high, then one segment as one plays
            target = high if play.buffer(now) < low else low
            await self._sleep(play.wait_for_room(now, target), play, stop_after, deadline)
        now = time.monotonic()
        listen.rebuffers, listen.stalled = play.rebuffers, play.stall_seconds()
        listen.played, listen.switches = play.play_seconds(now), abr.switches


def _kind(url: str) -> str:
    path = url.split("?", 1)[0]
    for marker, kind in (("/keys/", "key"), ("master.m3u8", "master playlist"), ("index.m3u8", "media playlist"),
                         ("init.mp4", "init segment"), (".m4s", "segment")):
        if marker in path:
            return kind
    return "request"


# --- node metrics --------------------------------------------------------------

def scrape(urls: dict[str, str]) -> dict[str, dict[tuple[str, ...], float]]:
    """name -> {(metric, label values...): value} for the counters this report uses."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[tuple[str, ...], float]] = {}
    for name, url in urls.items():
        values: dict[tuple[str, ...], float] = {}
        try:
            with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            continue
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "legato_cache_requests_total":
                    values[("cache", s.labels.get("result", ""))] = values.get(("cache", s.labels.get("result", "")), 0) + s.value
                elif s.name == "legato_http_requests_total" and s.labels.get("kind") in ("segment", "init"):
                    values[("origin_objects",)] = values.get(("origin_objects",), 0) + s.value
        out[name] = values
    return out


def tier_numbers(kinds: dict[str, str], before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per-tier cache results and origin segment fetches between two scrapes."""
    tiers: dict[str, Counter[str]] = defaultdict(Counter)
    origin_fetches = 0.0
    for name, kind in kinds.items():
        b, a = before.get(name, {}), after.get(name, {})
        for key, value in a.items():
            delta = value - b.get(key, 0.0)
            if key[0] == "cache":
                tiers[kind][key[1]] += int(delta)
            elif key[0] == "origin_objects" and kind == "origin":
                origin_fetches += delta
    out: dict[str, Any] = {"origin_segment_fetches": int(origin_fetches)}
    for kind, counts in tiers.items():
        total = sum(counts.values())
        out[kind] = {"results": dict(counts), "hit_ratio": counts["HIT"] / total if total else None}
    return out


# --- the run -----------------------------------------------------------------

async def run_players(plan: Plan, players: int, ramp: float, seed: int, progress: bool) -> Stats:
    import aiohttp

    stats = Stats(origin=time.monotonic())
    deadline = stats.origin + plan.duration
    ranks = range(1, len(plan.tracks) + 1)
    weights = [1 / r ** plan.zipf_s for r in ranks]
    timeout = aiohttp.ClientTimeout(total=30, sock_connect=5)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        async def one(n: int) -> None:
            await asyncio.sleep(ramp * n / max(1, players))
            await Player(n, plan, stats, session, seed * 100_003 + n).run(deadline, weights)

        tasks = [asyncio.create_task(one(n)) for n in range(players)]
        status = asyncio.create_task(_status(stats, deadline, progress))
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=plan.duration + 60)
        finally:
            status.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, status, return_exceptions=True)
    return stats


async def _status(stats: Stats, deadline: float, progress: bool) -> None:
    tty = sys.stderr.isatty()
    last = 0.0
    while True:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        if not progress or (not tty and now - last < 10):
            continue
        last = now
        second = stats.series.get(int(now - stats.origin) - 1, [0, 0, 0])
        total = sum(stats.x_cache.values()) - stats.x_cache[PASS]
        starts = [x.startup for x in stats.listens if x.startup is not None]
        p50 = percentile(starts, 50)
        line = (f"load: {now - stats.origin:5.0f}/{deadline - stats.origin:.0f} s  listens {len(stats.listens):5d}  "
                f"{second[0]:5d} req/s  {second[1] * 8 / 1e6:7.1f} Mbit/s  edge hits "
                f"{(stats.x_cache[CACHED] / total if total else 0):6.1%}  start p50 "
                f"{(p50 or 0) * 1000:5.0f} ms  errors {sum(stats.errors.values())}")
        print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)


def summarise(stats: Stats, tiers: dict[str, Any], plan: Plan, players: int) -> dict[str, Any]:
    done = [x for x in stats.listens if x.startup is not None]

    def pcts(values: list[float]) -> dict[str, float | None]:
        return {f"p{q}": (None if (v := percentile(values, q)) is None else round(v * 1000, 2)) for q in (50, 95, 99)}

    played = sum(x.played for x in done)
    stalled = sum(x.stalled for x in done)
    total = sum(stats.x_cache.values())
    cacheable = total - stats.x_cache[PASS]
    return {
        "players": players,
        "duration_s": plan.duration,
        "rtt_ms": plan.rtt * 1000,
        "bandwidth_median_bps": plan.bandwidth[0],
        "listens": len(stats.listens),
        "listens_started": len(done),
        "requests": total,
        "errors": sum(stats.errors.values()),
        "errors_by_cause": dict(stats.errors),
        "startup_ms": {"all": pcts([x.startup for x in done if x.startup is not None]),
                       "cached": pcts([x.startup for x in done if x.cached and x.startup is not None]),
                       "uncached": pcts([x.startup for x in done if not x.cached and x.startup is not None])},
        "rebuffers": sum(x.rebuffers for x in done),
        "rebuffer_ratio": stalled / (played + stalled) if played + stalled else 0.0,
        "bitrate_switches": sum(x.switches for x in done),
        "edge_x_cache": dict(stats.x_cache),
        "edge_hit_ratio": stats.x_cache[CACHED] / cacheable if cacheable else None,
        "tiers": tiers,
        "surge": None if plan.surge is None else {"at_s": plan.surge[0], "for_s": plan.surge[1],
                                                  "share": plan.surge[2], "track": plan.surge[3]},
        "series": [{"t": t, "requests": r, "bytes": b, "edge_hits": h} for t, (r, b, h) in sorted(stats.series.items())],
        "startups_ms": sorted(round(x.startup * 1000, 3) for x in done if x.startup is not None),
    }


def write_report(out: Path, results: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    starts = results["startups_ms"]
    fig, ax = plt.subplots(figsize=(6, 4))
    if starts:
        ax.plot(starts, [(i + 1) / len(starts) for i in range(len(starts))])
    ax.set_xlabel("start-up time (ms): manifest request to first segment in hand")
    ax.set_ylabel("fraction of listens")
    ax.set_title("Start-up latency CDF")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "startup_cdf.png", dpi=100)
    plt.close(fig)
    series = results["series"]
    fig, ax = plt.subplots(figsize=(7, 4))
    t = [row["t"] for row in series]
    ax.plot(t, [row["bytes"] * 8 / 1e6 for row in series], label="throughput (Mbit/s)")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("Mbit/s")
    ax2 = ax.twinx()
    ax2.plot(t, [row["edge_hits"] / row["requests"] if row["requests"] else float("nan") for row in series],
             color="tab:green", label="edge hit ratio")
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("edge hit ratio")
    if results["surge"]:
        s = results["surge"]
        ax.axvspan(s["at_s"], s["at_s"] + s["for_s"], color="tab:red", alpha=0.1, label="viral surge")
    ax.set_title("Throughput and edge hit ratio over time")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="center left", fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "throughput_hit_ratio.png", dpi=100)
    plt.close(fig)
    st = results["startup_ms"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    rows = [f"| {name} | {ms(st[name]['p50'])} | {ms(st[name]['p95'])} | {ms(st[name]['p99'])} |"
            for name in ("all", "cached", "uncached")]
    tiers = results["tiers"]
    tier_rows = [f"| {kind} | {v['hit_ratio']:.1%} | {json.dumps(v['results'])} |"
                 for kind, v in tiers.items() if isinstance(v, dict) and v.get("hit_ratio") is not None]
    edge = results["edge_hit_ratio"]
    text = f"""# bench load

{results['players']} players for {results['duration_s']:.0f} s: {results['listens']} listens
({results['listens_started']} started), {results['requests']} requests, **{results['errors']} errors**{
    ' (' + json.dumps(results['errors_by_cause']) + ')' if results['errors'] else ''}.

## Start-up time (ms, manifest request to first segment in hand)

| listens | p50 | p95 | p99 |
| --- | ---: | ---: | ---: |
{chr(10).join(rows)}

Each includes the simulated link: {results['rtt_ms']:.0f} ms round trip per request and the player's bandwidth.

"Cached" listens got their first segment as an edge `HIT`.

![start-up CDF](startup_cdf.png)

## Playback

- rebuffers: {results['rebuffers']}, rebuffer ratio {results['rebuffer_ratio']:.3%}
- bitrate switches: {results['bitrate_switches']}

## Caching

- edge hit ratio (from `X-Cache`, keys and licences left out: they are never cached): {'-' if edge is None else f'{edge:.1%}'} {json.dumps(results['edge_x_cache'])}
- origin segment and init fetches: {tiers.get('origin_segment_fetches', '-')}

| tier | hit ratio | results (from the nodes' /metrics) |
| --- | ---: | --- |
{chr(10).join(tier_rows)}

![throughput and hit ratio](throughput_hit_ratio.png)
"""
    (out / "report.md").write_text(text)
    return out / "report.md"


# --- command line ---------------------------------------------------------------

def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("load", help="simulated players against a live topology", formatter_class=HelpFormatter,
                       description=__doc__)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--topology", type=Path, metavar="FILE", help="start this topology (config/topology.toml)")
    where.add_argument("--entry", metavar="URL", help="a running director or edge to load")
    p.add_argument("--store", type=Path, default=None, help="store for the topology's origin (default: its own)")
    p.add_argument("--metrics", metavar="KIND=URL", action="append", default=[],
                   help="with --entry: a node to scrape /metrics from (kind: origin, regional, edge); repeatable")
    p.add_argument("--tracks", default=None, help="comma-separated track ids (default: every track in the store)")
    p.add_argument("--players", type=int, default=100, help="simulated players")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load; the run stops by itself")
    p.add_argument("--ramp", type=float, default=5.0, help="seconds over which players join")
    p.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of track popularity")
    p.add_argument("--buffer", type=float, nargs=2, default=(30.0, 90.0), metavar=("LOW", "HIGH"),
                   help="buffer targets in seconds: refill to HIGH when under LOW")
    p.add_argument("--bandwidth", type=float, default=20e6, help="median player bandwidth in bit/s (log-normal)")
    p.add_argument("--bandwidth-sigma", type=float, default=1.0, help="log-normal sigma of player bandwidth")
    p.add_argument("--initial-estimate", type=float, default=500e3,
                   help="bandwidth estimate in bit/s before the first measurement (hls.js: 500 kbit/s)")
    p.add_argument("--rtt", type=float, default=0.02, help="added round-trip time per request, seconds")
    p.add_argument("--skip-probability", type=float, default=0.5, help="share of listens that stop early")
    p.add_argument("--skip-mean", type=float, default=20.0, help="mean seconds heard before a skip")
    p.add_argument("--seek-probability", type=float, default=0.1, help="share of listens that seek once")
    p.add_argument("--speed", type=float, default=1.0, help="media seconds played per wall second")
    p.add_argument("--surge-at", type=float, default=None, help="seconds into the run a viral surge starts")
    p.add_argument("--surge-for", type=float, default=20.0, help="surge length in seconds")
    p.add_argument("--surge-share", type=float, default=0.5, help="share of new listens going to the surge track")
    p.add_argument("--surge-track", default=None, help="the surge track (default: the least popular)")
    p.add_argument("--signing-key", type=Path, default=None, help="Ed25519 private key PEM to issue session tokens")
    p.add_argument("--key-id", default="k1", help="signing key id the edges know")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p.add_argument("--out", type=Path, default=Path("bench-results/load"), help="report directory")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=run)


def _store_tracks(store: Path) -> list[str]:
    return sorted(p.parent.name for p in (store / "tracks").glob("*/track.json"))


def run(args: argparse.Namespace) -> int:
    for name in ("players", "duration"):
        if getattr(args, name) <= 0:
            print(f"legato bench load: --{name} must be positive", file=sys.stderr)
            return 2
    try:
        signer = _signer(args.signing_key, args.key_id)
    except (OSError, ValueError) as exc:
        print(f"legato bench load: --signing-key {args.signing_key}: {exc}", file=sys.stderr)
        return 2
    if args.topology is not None:
        from legato import config as cfg
        from legato import topology as topo

        try:
            topology = cfg.load(topo.Topology, args.topology)
        except cfg.ConfigError as exc:
            print(f"legato bench load: {exc}", file=sys.stderr)
            return 2
        store = args.store or topology.origin.store
        tracks = args.tracks.split(",") if args.tracks else _store_tracks(store)
        if not tracks:
            print(f"legato bench load: no tracks in {store} (package some with `legato package`)", file=sys.stderr)
            return 2
        try:
            with topo.start(topology, store) as nodes:
                entry = next((n.url for n in nodes if n.kind == "director"), None)
                entry = entry or next(n.url for n in nodes if n.kind == "edge")
                scraped = {n.name: n.url for n in nodes if n.kind != "director"}
                kinds = {n.name: n.kind for n in nodes}
                return _run(args, entry, tracks, signer, scraped, kinds)
        except RuntimeError as exc:
            print(f"legato bench load: {exc}", file=sys.stderr)
            return 1
    if not args.tracks:
        print("legato bench load: --entry needs --tracks", file=sys.stderr)
        return 2
    scraped, kinds = {}, {}
    for i, item in enumerate(args.metrics):
        kind, _, url = item.partition("=")
        if kind not in ("origin", "regional", "edge") or not url.startswith("http"):
            print(f"legato bench load: --metrics {item!r}: use KIND=URL with kind origin, regional or edge",
                  file=sys.stderr)
            return 2
        scraped[f"{kind}-{i}"], kinds[f"{kind}-{i}"] = url.rstrip("/"), kind
    return _run(args, args.entry.rstrip("/"), args.tracks.split(","), signer, scraped, kinds)


def _run(args: argparse.Namespace, entry: str, tracks: list[str], signer: Any, scraped: dict[str, str],
         kinds: dict[str, str]) -> int:
    from legato.server import new_event_loop

    surge = None
    if args.surge_at is not None:
        surge = (args.surge_at, args.surge_for, args.surge_share, args.surge_track or tracks[-1])
    plan = Plan(entry=entry, tracks=tuple(tracks), zipf_s=args.zipf, duration=args.duration,
                buffer=tuple(args.buffer), bandwidth=(args.bandwidth, args.bandwidth_sigma), rtt=args.rtt,
                skip_probability=args.skip_probability, skip_mean=args.skip_mean,
                seek_probability=args.seek_probability, speed=args.speed, initial_estimate=args.initial_estimate,
                surge=surge, signer=signer)
    before = scrape(scraped)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        stats = runner.run(run_players(plan, args.players, args.ramp, args.seed, not args.quiet))
    if not args.quiet and sys.stderr.isatty():
        print(file=sys.stderr)
    results = summarise(stats, tier_numbers(kinds, before, scrape(scraped)), plan, args.players)
    report = write_report(args.out, results)
    st = results["startup_ms"]
    print(f"players {args.players}, {results['listens']} listens, {results['requests']} requests, "
          f"{results['errors']} errors")
    print(f"start-up p50 {st['all']['p50']} ms, p99 {st['all']['p99']} ms (cached p50 {st['cached']['p50']}, "
          f"uncached p50 {st['uncached']['p50']}); rebuffer ratio {results['rebuffer_ratio']:.3%}")
    hit = results["edge_hit_ratio"]
    tiers = ", ".join(f"{k} {v['hit_ratio']:.1%}" for k, v in results["tiers"].items()
                      if isinstance(v, dict) and v.get("hit_ratio") is not None)
    print(f"edge hit ratio {'-' if hit is None else f'{hit:.1%}'} (X-Cache); per tier: {tiers or '-'}; "
          f"origin fetches {results['tiers'].get('origin_segment_fetches')}")
    print(f"report: {report}")
    return 1 if results["errors"] else 0
