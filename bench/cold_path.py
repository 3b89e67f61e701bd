"""Cold path: latency a miss adds at each tier, and a surge's origin fetch count.

Starts a real topology on 127.0.0.1 (origin, 2 regionals, 1 edge with 2
workers) over a freshly packaged store, then

1. fetches distinct, never-cached segments straight from origin, through a
   regional (regional miss -> origin), and through the edge (edge miss ->
   regional miss -> origin), alternating the three so machine noise hits
   them alike, and reports median and p90 per path and the latency each
   tier adds;
2. sends N concurrent requests for one uncached segment to the edge and
   reads origin's request counter: the number of origin fetches it caused.

Writes ``OUT/cold_path.json`` (every number) and ``OUT/cold_path.md``.
Usage: ``python bench/cold_path.py [--rounds 40] [--surge 1000] [--out bench/results]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from legato.topology import CacheNode, OriginNode, Topology, start
from packager.samples import write_sample


def origin_segment_fetches(url: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("legato_http_requests_total{") and 'kind="segment"' in line and 'status="200"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def timed_get(url: str) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as resp:
        resp.read()
        assert resp.status == 200
    return (time.perf_counter() - t0) * 1000


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def surge(url: str, n: int) -> list[int]:
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=conn) as s:
        async def one() -> int:
            async with s.get(url, timeout=aiohttp.ClientTimeout(total=120)) as r:
                await r.read()
                return r.status
        return await asyncio.gather(*(one() for _ in range(n)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40, help="distinct cold objects fetched per path")
    ap.add_argument("--surge", type=int, default=1000, help="concurrent requests in the surge")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="results directory")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="legato-cold-"))
    try:
        store = work / "store"
        # every path walks its own rendition with stride 3: edge prefetch (2 segments ahead)
        # never warms an object that is timed later as cold
        src = write_sample(work / "src.flac", 6.0 * 3 * args.rounds + 12)
        subprocess.run([sys.executable, "-m", "legato.cli", "package", str(src), "--store", str(store),
                        "--track-id", "cold", "--no-progress", "--protect", "none"], check=True, capture_output=True)
        n_segments = len(json.loads((store / "tracks/cold/track.json").read_text())["renditions"][0]["segments"])
        free = "127.0.0.1:0"
        topo = Topology(state_dir=work / "state", origin=OriginNode(listen=free, store=store),
                        regional=(CacheNode(name="ra", listen=free), CacheNode(name="rb", listen=free)),
                        edge=(CacheNode(name="e1", listen=free, workers=2),))
        with start(topo, store) as nodes:
            urls = {n.name: n.url for n in nodes}
            regional = urls["ra"]
            paths = (("origin", urls["origin"], "aac-96k"), ("regional", regional, "aac-160k"),
                     ("edge", urls["e1"], "aac-320k"))
            if 3 * args.rounds > n_segments:
                raise SystemExit(f"only {n_segments} segments for {args.rounds} rounds")
            samples: dict[str, list[float]] = {"origin": [], "regional": [], "edge": []}
            for i in range(args.rounds):
                for name, base, rendition in paths:
                    samples[name].append(timed_get(f"{base}/tracks/cold/{rendition}/seg-{3 * i + 1:05d}.m4s"))
            # the surge: the last FLAC segment, its playlist known to the edge (no prefetch past the end)
            urllib.request.urlopen(urls["e1"] + "/tracks/cold/flac/index.m3u8", timeout=10).read()
            time.sleep(1.0)  # background prefetches of the timed requests settle first
            before = origin_segment_fetches(urls["origin"])
            statuses = asyncio.run(surge(f"{urls['e1']}/tracks/cold/flac/seg-{n_segments:05d}.m4s", args.surge))
            fetches = origin_segment_fetches(urls["origin"]) - before
        med = {k: statistics.median(v) for k, v in samples.items()}
        results = {
            "rounds": args.rounds,
            "latency_ms": {k: {"median": med[k], "p90": pct(v, 0.9), "all": v} for k, v in samples.items()},
            "added_ms": {"regional_over_origin": med["regional"] - med["origin"],
                         "edge_over_regional": med["edge"] - med["regional"]},
            "surge": {"requests": args.surge, "ok": sum(s == 200 for s in statuses), "origin_fetches": fetches},
            "machine": {"nproc": os.cpu_count(), "cpu": _cpu(), "python": platform.python_version()},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cold_path.json").write_text(json.dumps(results, indent=1) + "\n")
    lat = results["latency_ms"]
    md = [
        "# Cold path: latency added per tier on a miss",
        "",
        (f"{args.rounds} distinct cold segments per path, medians and p90 in ms (loopback, {results['machine']['nproc']}"
         f" cores, {results['machine']['cpu']})."),
        "",
        "| path | median ms | p90 ms |",
        "| --- | --- | --- |",
        *(f"| {k} | {lat[k]['median']:.2f} | {lat[k]['p90']:.2f} |" for k in ("origin", "regional", "edge")),
        "",
        (f"Added by the regional tier: {results['added_ms']['regional_over_origin']:.2f} ms; "
         f"by the edge tier: {results['added_ms']['edge_over_regional']:.2f} ms (medians)."),
        "",
        (f"Surge: {args.surge} concurrent requests for one uncached segment at an edge with 2 workers: "
         f"{results['surge']['ok']} answered 200, origin fetched it {results['surge']['origin_fetches']:.0f} time(s)."),
        "",
    ]
    (args.out / "cold_path.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


def _cpu() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    m = re.search(r"model name\s*:\s*(.+)", text)
    return m.group(1).strip() if m else platform.processor()


if __name__ == "__main__":
    sys.exit(main())
