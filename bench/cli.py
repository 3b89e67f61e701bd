"""`legato bench`: traces, cache simulation and capacity planning, each with a report.

Each action is one entry of ``ACTIONS`` (name -> function adding its parser);
adding one (e.g. ``load``) is one function and one line.  Every action
takes ``--out DIR`` and writes ``report.md``, ``results.json`` and PNG plots
there (see bench/report.py); errors in inputs end with one line on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from legato.cli import HelpFormatter

Action = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)b?", re.IGNORECASE)
_COUNT = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)", re.IGNORECASE)
_DECIMAL = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}


class InputError(Exception):
    """A bad command-line value or input file: printed as one line, exit status 2."""


# --------------------------------------------------------------------------
# value parsers (argparse types: ArgumentTypeError becomes a usage error)


def parse_bytes(text: str) -> int:
    """'10G', '512MiB', '1.5T', '1048576' -> bytes (decimal units; KiB, MiB... binary)."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1048576, 512M, 10G, 2TiB)")
    unit = m.group(2).lower()
    scale = 1024 ** "kmgtp".index(unit) * 1024 if unit and m.group(3) else _DECIMAL[unit]
    return int(float(m.group(1)) * scale)


def parse_cache_size(text: str) -> tuple[str, float | int]:
    """'5%' -> ('5%', 0.05) or '10G' -> ('10G', bytes)."""
    text = text.strip()
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a percentage (e.g. 5%)") from None
        if not 0 < pct <= 100:
            raise argparse.ArgumentTypeError(f"{text!r}: a percentage of the working set must be in (0, 100]")
        return text, pct / 100
    size = parse_bytes(text)
    if size <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a cache size must be > 0 bytes")
    return text, size


def parse_sizes(text: str) -> list[tuple[str, float | int]]:
    return [parse_cache_size(part) for part in _split(text, "cache size")]


def parse_count(text: str) -> int:
    """'500M' -> 500_000_000 (k, M, G, T are powers of 1000)."""
    m = _COUNT.fullmatch(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (e.g. 500M, 100k, 12000)")
    return int(float(m.group(1)) * _DECIMAL[m.group(2).lower()])


def parse_shares(text: str) -> dict[str, float]:
    """'eu:0.35,na:0.3' -> {'eu': 0.35, 'na': 0.3}."""
    out: dict[str, float] = {}
    for part in _split(text, "share"):
        name, sep, value = part.partition(":")
        try:
            share = float(value)
        except ValueError:
            share = -1.0
        if not sep or not name or share < 0:
            raise argparse.ArgumentTypeError(f"{part!r} is not NAME:SHARE (e.g. eu:0.35)")
        out[name] = share
    return out


def parse_mix(text: str) -> list[tuple[str, float, float]]:
    """'aac-96k:96:0.3,aac-160k:160:0.7' -> [(name, kbps, share), ...]."""
    out = []
    for part in _split(text, "rendition"):
        bits = part.split(":")
        try:
            name, kbps, share = bits[0], float(bits[1]), float(bits[2])
        except (IndexError, ValueError):
            raise argparse.ArgumentTypeError(f"{part!r} is not NAME:KBPS:SHARE (e.g. aac-160k:160:0.4)") from None
        if len(bits) != 3 or kbps <= 0 or share < 0 or not name:
            raise argparse.ArgumentTypeError(f"{part!r}: need NAME:KBPS:SHARE with KBPS > 0 and SHARE >= 0")
        out.append((name, kbps, share))
    if sum(s for _, _, s in out) <= 0:
        raise argparse.ArgumentTypeError("the rendition shares add up to 0")
    return out


def _split(text: str, what: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"no {what} given")
    return parts


def _names(text: str) -> list[str]:
    return _split(text, "name")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1")
    return value


def _progress(total: int, desc: str, unit: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr,
                disable=None if enabled else True, dynamic_ncols=True)


def _out_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, metavar="DIR", required=True,
                   help="directory for report.md, results.json and the PNG plots (created if missing)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (it only shows on a terminal anyway)")


# --------------------------------------------------------------------------
# trace


def add_trace(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from bench import trace as tr

    d = tr.TraceModel()
    w = d.workload
    p = sub.add_parser(
        "trace", formatter_class=HelpFormatter, help="generate a synthetic listening trace",
        description="Generate a synthetic listening trace (time, client, object, size) from a documented "
        "model: Zipf popularity over a catalogue, new releases (churn), a viral surge, listens from segment 1 "
        "with skips, a rendition mix and a daily cycle (see bench/trace.py).\n\nWrites DIR/trace.csv (or "
        "trace.csv.gz with --gzip) and a report; replay it with `legato bench simulate --trace DIR/trace.csv`.")
    p.add_argument("--tracks", type=parse_count, default=w.tracks, help="catalogue size in tracks")
    p.add_argument("--zipf", type=_positive_float, default=w.zipf_s, help="Zipf exponent of track popularity")
    p.add_argument("--listens", type=parse_count, default=w.listens, help="listens in the trace")
    p.add_argument("--rate", type=_positive_float, default=w.listen_rate,
                   help="mean listens per second of virtual time")
    p.add_argument("--clients", type=parse_count, default=d.clients, help="distinct clients (listeners)")
    p.add_argument("--skip", type=_fraction, default=w.skip_probability,
                   help="mean probability that a listen is skipped before the end")
    p.add_argument("--skip-seconds", type=_positive_float, default=w.skip_mean_seconds,
                   help="mean seconds into a track when a skip happens")
    p.add_argument("--mix", type=parse_mix, default=None, metavar="NAME:KBPS:SHARE,...",
                   help="rendition mix (default: " + ",".join(f"{r.name}:{r.kbps:g}:{r.share:g}"
                                                               for r in w.renditions) + ")")
    p.add_argument("--churn", type=_fraction, default=d.churn,
                   help="new releases per hour, as a share of the catalogue (they enter the top 1%%)")
    p.add_argument("--surge-at", type=float, metavar="SECONDS", default=None,
                   help="start of a viral surge, seconds into the trace (default: no surge)")
    p.add_argument("--surge-for", type=_positive_float, metavar="SECONDS", default=d.surge_seconds,
                   help="length of the surge")
    p.add_argument("--surge-share", type=_fraction, default=d.surge_share,
                   help="share of listens that go to the surging track during the surge")
    p.add_argument("--diurnal", type=_fraction, default=d.diurnal,
                   help="amplitude of the daily load cycle (0: flat; 0.5: peak 3x the trough)")
    p.add_argument("--seed", type=int, default=1, help="random seed: the same seed gives the same trace")
    p.add_argument("--gzip", action="store_true", help="write trace.csv.gz")
    _out_arg(p)
    p.set_defaults(run=run_trace)


def run_trace(args: argparse.Namespace) -> int:
    from bench import report
    from bench import trace as tr
    from cache.sim import Rendition

    changes: dict[str, Any] = {"tracks": args.tracks, "zipf_s": args.zipf, "listens": args.listens,
                               "listen_rate": args.rate, "skip_probability": args.skip,
                               "skip_mean_seconds": args.skip_seconds, "clients": args.clients,
                               "churn": args.churn, "surge_at": args.surge_at, "surge_seconds": args.surge_for,
                               "surge_share": args.surge_share, "diurnal": args.diurnal}
    if args.mix:
        changes["renditions"] = tuple(Rendition(name, kbps, share) for name, kbps, share in args.mix)
    try:
        model = tr.model_with(tr.TraceModel(), **changes)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    path = args.out / ("trace.csv.gz" if args.gzip else "trace.csv")
    header = {"model": model.to_json(), "seed": args.seed}
    started = time.monotonic()
    bucket = 900.0
    counts: list[int] = []
    byte_counts: list[int] = []
    per_track: dict[str, int] = {}

    def observed() -> Any:
        for client, req in tr.generate(model, args.seed):
            b = int(req.time // bucket)
            while len(counts) <= b:
                counts.append(0)
                byte_counts.append(0)
            counts[b] += 1
            byte_counts[b] += req.size
            if req.key.endswith("/init.mp4"):
                track = req.key.split("/")[2]
                per_track[track] = per_track.get(track, 0) + 1
            yield client, req

    with _progress(model.workload.listens * 10, "trace", "req", args.progress) as bar:
        n = tr.write_csv(path, observed(), header=header, progress=bar.update)
    listens = sum(per_track.values())
    top = sorted(per_track.items(), key=lambda kv: -kv[1])[:10]
    top_tracks: list[dict[str, Any]] = [{"track": t, "listens": c, "share": c / max(1, listens)} for t, c in top]
    results = {
        "command": report.command_line(),
        "file": str(path),
        "requests": n,
        "listens": listens,
        "tracks_heard": len(per_track),
        "catalogue_bytes": model.catalogue_bytes(),
        "model": header,
        "interval_s": bucket,
        "requests_per_interval": counts,
        "bytes_per_interval": byte_counts,
        "top_tracks": top_tracks,
        "wall_seconds": round(time.monotonic() - started, 1),
        "machine": report.machine(),
    }
    md = "\n".join([
        "# Synthetic trace", "", f"`{results['command']}`", "",
        f"- file: `{path}` ({n:,} requests, {listens:,} listens of {len(per_track):,} distinct tracks)",
        (f"- model: {model.workload.tracks:,} tracks, Zipf {model.workload.zipf_s}, {model.workload.listen_rate}"
        f" listens/s, skip probability {model.workload.skip_probability}, churn {model.churn}/h, "
        f"surge {'at ' + str(model.surge_at) + ' s' if model.surge_at is not None else 'off'}, diurnal "
        f"{model.diurnal}, {model.clients:,} clients, seed {args.seed}"),
        f"- catalogue bytes (every rendition): {model.catalogue_bytes() / 1e9:,.1f} GB",
        "", "| track | listens | share |", "| --- | ---: | ---: |",
        *[f"| {t['track']} | {t['listens']:,} | {100 * t['share']:.2f}% |" for t in top_tracks],
        "", "![requests over time](requests.png)", "",
    ])

    def plot() -> Any:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(10, 3.6))
        ax.plot([k * bucket / 3600 for k in range(len(counts))], [c / bucket for c in counts])
        if model.surge_at is not None:
            ax.axvspan(model.surge_at / 3600, (model.surge_at + model.surge_seconds) / 3600, color="orange",
                       alpha=0.2, label="viral surge")
            ax.legend()
        ax.set_xlabel("hours of virtual time")
        ax.set_ylabel("requests per second")
        ax.set_title("trace load over time")
        ax.grid(True, alpha=0.3)
        return fig

    report.write_report(args.out, md, results, {"requests": plot})
    print(f"wrote {path}: {n:,} requests; report in {args.out / 'report.md'}")
    return 0


# --------------------------------------------------------------------------
# simulate


def add_simulate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from bench.libcachesim_peer import PEERS
    from cache.policy import POLICIES

    p = sub.add_parser(
        "simulate", formatter_class=HelpFormatter, help="replay a trace through the cache policies and tiers",
        description="Replay a trace through the production cache policies (cache.policy) on a virtual clock, "
        "for one cache or a topology of E edges x R regionals x origin, at one or more edge sizes, and the "
        "edge alone through libCacheSim (LRU, LFU, ARC, S3-FIFO, SIEVE, W-TinyLFU, Belady) at the same sizes.\n\n"
        "Traces: our CSV (`legato bench trace`), our JSON access logs, or Common/Combined Log Format; lines "
        "that are not cached objects are skipped, malformed lines are counted and reported.\n\n"
        "Example: legato bench simulate --trace t/trace.csv --cache-size 1%,5%,10% --policy lru,listen --out r")
    p.add_argument("--trace", type=Path, metavar="FILE", required=True,
                   help="trace file: CSV (time,client,object,size), JSON access log or CLF; .gz is read too")
    p.add_argument("--trace-format", choices=("auto", "csv", "json", "clf"), default="auto",
                   help="trace format (auto: from the first line)")
    p.add_argument("--cache-size", "--edge-size", dest="sizes", type=parse_sizes, default=parse_sizes("5%"),
                   metavar="SIZE,...", help="edge cache size(s): bytes (512M, 10G) or %% of the trace's working "
                   "set; several give the hit-ratio-vs-size plot (default: 5%%)")
    p.add_argument("--policy", "--edge-policy", dest="policies", type=_names, metavar="NAME,...",
                   default=["lru", "lfu", "sieve", "s3fifo", "listen"],
                   help=f"edge eviction policies to compare (known: {', '.join(POLICIES)}; default: all)")
    p.add_argument("--topology-policy", dest="topology_policies", type=_names, metavar="NAME,...", default=None,
                   help="edge policies to run through the whole topology (default: every --policy; the edge-alone "
                   "comparison always runs them all)")
    p.add_argument("--edges", type=int, default=1, metavar="E", help="edge nodes (clients hashed over them)")
    p.add_argument("--regionals", type=int, default=0, metavar="R",
                   help="regional nodes (objects hashed over them by track; 0: edges fetch from origin)")
    p.add_argument("--regional-size", type=parse_cache_size, default=("10%", 0.1), metavar="SIZE",
                   help="size of each regional: bytes or %% of the working set (default: 10%%)")
    p.add_argument("--regional-policy", default=None, metavar="NAME",
                   help="regional eviction policy (default: the edge's, run by run)")
    p.add_argument("--prefetch", type=int, default=0, metavar="K",
                   help="edge prefetch: segments fetched ahead after each segment request (0: off)")
    p.add_argument("--interval", type=_positive_float, default=None, metavar="SECONDS",
                   help="time-series interval (default: the trace's duration / 96)")
    p.add_argument("--peers", type=_names, default=list(PEERS), metavar="NAME,...",
                   help=f"libCacheSim policies beside ours (known: {', '.join(PEERS)}; default: all)")
    p.add_argument("--no-peers", dest="peers", action="store_const", const=[],
                   help="do not run libCacheSim")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="worker processes for the runs")
    _out_arg(p)
    p.set_defaults(run=run_simulate)


def run_simulate(args: argparse.Namespace) -> int:
    from bench import report
    from bench.libcachesim_peer import PEERS, libcachesim_version
    from bench.simulate import BenchSpec, run_bench
    from bench.trace import TraceModel, read_trace
    from cache.policy import POLICIES

    topology_policies = args.topology_policies or []
    unknown = [p for p in [*args.policies, *topology_policies, *([args.regional_policy] if args.regional_policy
                                                                 else [])] if p not in POLICIES]
    if unknown:
        raise InputError(f"unknown policy {', '.join(unknown)} (known: {', '.join(POLICIES)})")
    bad_peers = [p for p in args.peers if p not in PEERS]
    if bad_peers:
        raise InputError(f"unknown libCacheSim policy {', '.join(bad_peers)} (known: {', '.join(PEERS)})")
    if args.edges < 1 or args.regionals < 0 or args.prefetch < 0 or args.jobs < 1:
        raise InputError("--edges and --jobs must be >= 1, --regionals and --prefetch >= 0")
    version = libcachesim_version()
    if args.peers and version is None:
        raise InputError("libcachesim is not installed (pip install libcachesim), or pass --no-peers")
    started = time.monotonic()
    trace = read_trace(args.trace, args.trace_format)
    ws = trace.working_set_bytes()
    sizes = [(label, int(v * ws) if isinstance(v, float) else v) for label, v in args.sizes]
    if any(size <= 0 for _, size in sizes):
        raise InputError(f"a cache size rounds to 0 bytes (working set: {ws} bytes)")
    regional_label, regional = args.regional_size
    regional_size = int(regional * ws) if isinstance(regional, float) else regional
    interval = args.interval or max(trace.duration / 96, 1.0)
    spec = BenchSpec(sizes=tuple(s for _, s in sizes), labels=tuple(label for label, _ in sizes),
                     policies=tuple(args.policies), edges=args.edges, regionals=args.regionals,
                     regional_size=regional_size, regional_policy=args.regional_policy, prefetch=args.prefetch,
                     interval=interval, peers=tuple(args.peers), jobs=args.jobs,
                     topology_policies=tuple(topology_policies))
    alone_runs = len(sizes) * len(args.policies)
    topology_runs = 0 if spec.single_cache else len(sizes) * len(topology_policies or args.policies)
    total = alone_runs * len(trace) // max(1, args.edges) + topology_runs * len(trace)
    with _progress(total, "simulate", "req", args.progress) as bar:
        bench = run_bench(trace, spec, progress=bar.update)
    summary = trace.summary()
    model_doc = (trace.model or {}).get("model")
    if model_doc:
        try:
            summary["catalogue_bytes"] = TraceModel.from_json(model_doc).catalogue_bytes()
        except (TypeError, ValueError):
            pass
    results: dict[str, Any] = {
        "command": report.command_line(),
        "trace": summary,
        "settings": {"edges": args.edges, "regionals": args.regionals, "regional_size": regional_size,
                     "regional_size_given": regional_label, "regional_policy": args.regional_policy,
                     "prefetch": args.prefetch, "interval_s": interval, "jobs": args.jobs},
        "libcachesim": version,
        "bench": bench,
        "machine": report.machine(),
    }
    results["findings"] = report.findings(results)
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    report.write_report(args.out, report.simulate_markdown(results), results, report.plot_simulate(results))
    print(f"{len(trace):,} requests replayed; report in {args.out / 'report.md'}")
    for line in results["findings"]:
        print(f"  {line}")
    return 0


# --------------------------------------------------------------------------
# plan


def add_plan(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "plan", formatter_class=HelpFormatter, help="capacity plan: edges, SSD, egress per tier, origin storage",
        description="Plan capacity from targets (users, concurrent streams, bit rates, catalogue, popularity, "
        "regions) and measurements (per-edge throughput from --edge-gbps or a serving benchmark; hit ratios "
        "from a `legato bench simulate` results.json). The model is in bench/plan.py's docstring and in the "
        "report.\n\nExample (the design's 500M users): legato bench plan --users 500M --streams 50M "
        "--bitrate 256 --tracks 100M --simulate-results bench/results/simulate/results.json --out plan")
    p.add_argument("--users", type=parse_count, default=parse_count("500M"), help="registered users")
    p.add_argument("--streams", type=parse_count, default=None,
                   help="concurrent streams at peak (default: users x --concurrency)")
    p.add_argument("--concurrency", type=_fraction, default=0.1, help="share of users streaming at peak")
    p.add_argument("--bitrate", type=_positive_float, default=None, metavar="KBPS",
                   help="mean bit rate of a stream (default: the mean of --mix)")
    p.add_argument("--mix", type=parse_mix, default=parse_mix("aac-96k:96:0.3,aac-160k:160:0.4,aac-320k:320:0.2,"
                                                              "flac:930:0.1"),
                   metavar="NAME:KBPS:SHARE,...", help="rendition mix: the ladder (origin storage) and, "
                   "unless --bitrate, the mean bit rate (default: aac-96k:96:0.3,aac-160k:160:0.4,"
                   "aac-320k:320:0.2,flac:930:0.1)")
    p.add_argument("--tracks", type=parse_count, default=parse_count("100M"), help="catalogue size in tracks")
    p.add_argument("--track-seconds", type=_positive_float, default=210.0, help="mean track length")
    p.add_argument("--zipf", type=_positive_float, default=0.9, help="Zipf exponent of track popularity")
    p.add_argument("--regions", type=parse_shares, default=parse_shares("eu:0.35,na:0.30,apac:0.25,latam:0.10"),
                   metavar="NAME:SHARE,...", help="traffic split over regions (default: eu:0.35,na:0.30,"
                   "apac:0.25,latam:0.10)")
    p.add_argument("--edge-gbps", type=_positive_float, default=None, help="measured throughput of one edge")
    p.add_argument("--serving-results", type=Path, metavar="FILE", default=None,
                   help="serving benchmark results.json to derive --edge-gbps from (bench/serve_vs_nginx.py)")
    p.add_argument("--edge-cores", type=int, default=32, help="cores per edge (with --serving-results)")
    p.add_argument("--edge-nic-gbps", type=_positive_float, default=100.0,
                   help="network limit per edge (with --serving-results)")
    p.add_argument("--utilisation", type=_fraction, default=0.7, help="how busy an edge may run at peak")
    p.add_argument("--spare", type=int, default=1, help="spare edges per region")
    p.add_argument("--simulate-results", type=Path, metavar="FILE", default=None,
                   help="`legato bench simulate` results.json giving the edge (and regional) hit ratios")
    p.add_argument("--policy", default="listen", help="which policy's hit ratios to use")
    p.add_argument("--target-edge-hit", type=_fraction, default=0.9,
                   help="edge byte hit ratio to size the SSD for")
    p.add_argument("--edge-ssd", type=parse_bytes, default=None, metavar="BYTES",
                   help="given SSD per edge instead of a target hit ratio (e.g. 8T)")
    p.add_argument("--edge-hit", type=_fraction, default=None,
                   help="edge byte hit ratio to assume when there are no simulate results")
    p.add_argument("--regional-hit", type=_fraction, default=None,
                   help="regional byte hit ratio of edge misses (default: from the simulate results, else 0)")
    p.add_argument("--copies", type=int, default=1, help="copies of each rendition at origin (e.g. 2 for "
                   "clear + one protection scheme)")
    _out_arg(p)
    p.set_defaults(run=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    from bench import plan as pl
    from bench import report

    if args.spare < 0 or args.edge_cores < 1 or args.copies < 1:
        raise InputError("--spare must be >= 0, --edge-cores and --copies >= 1")
    if args.edge_gbps is not None:
        edge_gbps, source = args.edge_gbps, "given"
    elif args.serving_results is not None:
        edge_gbps, source = pl.edge_gbps_from_serving(args.serving_results, args.edge_cores, args.edge_nic_gbps)
    else:
        raise InputError("give --edge-gbps or --serving-results (the measured throughput of one edge)")
    if args.simulate_results is not None:
        curve = pl.hit_curve_from_simulate(args.simulate_results, args.policy)
        hit_source = curve.source
    elif args.edge_hit is not None and args.edge_ssd is not None:
        curve = pl.HitCurve(((1e-12, args.edge_hit, args.edge_hit),), (), "given")
        hit_source = f"given: edge byte hit {args.edge_hit:.0%}"
    else:
        raise InputError("give --simulate-results FILE (hit ratios measured by `legato bench simulate`), "
                         "or --edge-hit with --edge-ssd")
    kbps = args.bitrate or sum(k * s for _, k, s in args.mix) / sum(s for _, _, s in args.mix)
    streams = args.streams if args.streams is not None else int(args.users * args.concurrency)
    inputs = pl.PlanInputs(
        users=args.users, streams=streams, mean_kbps=kbps, tracks=args.tracks, zipf_s=args.zipf,
        regions=args.regions, edge_gbps=edge_gbps, edge_gbps_source=source, track_seconds=args.track_seconds,
        ladder_kbps={name: k for name, k, _ in args.mix}, copies=args.copies, utilisation=args.utilisation,
        spare_edges=args.spare, target_edge_hit=args.target_edge_hit, edge_ssd=args.edge_ssd,
        regional_hit=args.regional_hit)
    result = pl.plan(inputs, curve)
    results = {
        "command": report.command_line(),
        "inputs": {"users": inputs.users, "streams": inputs.streams, "mean_kbps": inputs.mean_kbps,
                   "tracks": inputs.tracks, "track_seconds": inputs.track_seconds, "zipf_s": inputs.zipf_s,
                   "ladder_kbps": inputs.ladder_kbps, "regions": inputs.regions, "edge_gbps": inputs.edge_gbps,
                   "edge_gbps_source": inputs.edge_gbps_source, "utilisation": inputs.utilisation,
                   "spare_edges": inputs.spare_edges, "target_edge_hit": inputs.target_edge_hit,
                   "edge_ssd": inputs.edge_ssd, "copies": inputs.copies, "hit_source": hit_source,
                   "hit_curve": [list(p) for p in curve.points], "regional_curve": [list(p) for p in curve.regional]},
        **result,
        "model": pl.MODEL,
    }
    md = report.plan_markdown(results)
    if result["outputs"]["notes"]:
        md += "\n## Notes\n\n" + "\n".join(f"- {n}" for n in result["outputs"]["notes"]) + "\n"
    report.write_report(args.out, md, results, report.plot_plan(results))
    o = result["outputs"]
    print(f"demand {o['demand_gbps'] / 1000:,.2f} Tbit/s; {o['edges_total']:,} edges with "
          f"{o['ssd_per_edge_bytes'] / 1e12:,.2f} TB SSD each; edge byte hit {o['edge_byte_hit_ratio']:.1%}; "
          f"egress edge/regional/origin {o['egress_gbps']['edge']:,.0f}/{o['egress_gbps']['regional']:,.0f}/"
          f"{o['egress_gbps']['origin']:,.0f} Gbit/s; origin storage {o['origin_storage_bytes'] / 1e15:,.2f} PB; "
          f"report in {args.out / 'report.md'}")
    for note in o["notes"]:
        print(f"  note: {note}")
    return 0


# --------------------------------------------------------------------------

def add_load(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from bench.load import (
        add_parser,  # sets its own ``func``: it reports its own errors
    )

    add_parser(sub)


ACTIONS: dict[str, Action] = {
    "trace": add_trace,
    "simulate": add_simulate,
    "load": add_load,
    "plan": add_plan,
}
"""``legato bench ACTION``: adding one (``load``) is one function and one line."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``legato bench`` and its actions."""
    p = subparsers.add_parser(
        "bench", formatter_class=HelpFormatter, help="traces, cache simulation and capacity planning",
        description="Benchmarks for capacity planners. Each action writes report.md, results.json and PNG plots "
        "into --out DIR.\n\n  trace     generate a synthetic listening trace\n  simulate  replay a trace "
        "through the cache policies and tiers (and libCacheSim)\n  load      simulated players against a live "
        "topology\n  plan      edges, SSD, egress and storage for "
        "a target audience")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for add in ACTIONS.values():
        add(sub)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from bench.plan import PlanError
    from bench.trace import TraceError

    try:
        return int(args.run(args) or 0)
    except (InputError, TraceError, PlanError) as exc:
        print(f"legato bench {args.action}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"legato bench {args.action}: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
