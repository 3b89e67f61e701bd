"""Geo decision cost: country lookup + licence decision per request, in process.

What the licence gate adds to a manifest or key request, measured call by
call (``time.perf_counter_ns`` around each) over many distinct addresses:

* **lookup + decide** (the target, p99 < 50 µs): ``CountryDB.lookup(ip)``,
  pick the licence's country field, ``geo.licence.decide`` against a
  three-term licence;
* **address + lookup + decide**: the same plus ``geo.client.client_address``
  walking an ``X-Forwarded-For`` from a trusted proxy (what a request behind
  a load balancer costs).

Databases: the GeoLite2 City of ``maxminddb-geolite2`` (57 MB, 3.6 M
nodes: a real database's size and record layout) and MaxMind's small City
test file.  Addresses: uniformly random IPv4 (most are found in GeoLite2), a
share of IPv6, and the test file's own known addresses.  The peer measured in
the same run is the ``maxminddb`` pure-Python memory-mapped reader
(``MODE_MMAP``) on the same calls, against libmaxminddb through the C
extension (``MODE_MMAP_EXT``) that geo.country uses.

Writes ``OUT/geo_decision.json`` and ``OUT/geo_decision.md``.
Usage: ``python bench/geo_decision.py [--addresses 20000] [--rounds 3] [--out bench/results]``
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import maxminddb

from geo import country as geo_country
from geo.client import client_address, parse_networks
from geo.country import CountryDB, bundled_geolite2
from geo.licence import Licence, Policy, decide, deciding_field

TEST_DB = REPO / "tests" / "data" / "maxmind" / "GeoIP2-City-Test.mmdb"
KNOWN = ["81.2.69.160", "89.160.20.112", "216.160.83.56", "2.125.160.216", "202.196.224.1", "2001:218::1", "8.8.8.8"]
LICENCE = Licence.from_json(json.dumps({
    "track": "bench", "replacements": {"SE": "bench-se"},
    "terms": [{"allow": ["GB", "IE"], "not_after": "2030-01-01T00:00:00Z", "model": "subscription"},
              {"allow": ["WW"], "deny": ["SE", "GB", "IE", "CN"], "model": "ad-supported"},
              {"allow": ["GB", "IE"], "not_before": "2030-01-01T00:00:00Z", "model": "ad-supported"}]}))
POLICY = Policy()
TRUSTED = parse_networks(["10.0.0.0/8", "127.0.0.1/32"])


def addresses(n: int, seed: int) -> list[Any]:
    rng = random.Random(seed)
    out: list[Any] = []
    for i in range(n):
        if i % 10 == 0:
            out.append(ipaddress.ip_address(KNOWN[rng.randrange(len(KNOWN))]))
        elif i % 10 == 1:  # IPv6 in the allocated 2000::/3
            out.append(ipaddress.IPv6Address((0x2 << 124) | rng.getrandbits(124)))
        else:
            out.append(ipaddress.IPv4Address(rng.getrandbits(32)))
    return out


def percentiles(ns: list[int]) -> dict[str, float]:
    s = sorted(ns)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))] / 1000

    return {"p50_us": q(0.50), "p90_us": q(0.90), "p99_us": q(0.99), "p999_us": q(0.999),
            "mean_us": statistics.fmean(s) / 1000, "n": len(s)}


def measure(fn: Callable[[Any], object], inputs: list[Any]) -> list[int]:
    times = []
    clock = time.perf_counter_ns
    for x in inputs:
        t0 = clock()
        fn(x)
        times.append(clock() - t0)
    return times


def lookup_decide(db: CountryDB, now: float) -> Callable[[Any], object]:
    field = deciding_field(LICENCE, POLICY)

    def run(ip: Any) -> object:
        info = db.lookup(ip)
        country = info.field(field) if info else None
        return decide(LICENCE, country, now, POLICY, anonymous=bool(info and info.is_anonymous))

    return run


def with_address(db: CountryDB, now: float) -> Callable[[Any], object]:
    inner = lookup_decide(db, now)

    def run(headers: Any) -> object:
        return inner(client_address("10.1.2.3", headers, TRUSTED))

    return run


def pure_python(path: Path) -> CountryDB:
    """The same CountryDB on maxminddb's pure-Python reader (the peer)."""
    original = geo_country._open_reader
    geo_country._open_reader = lambda p: maxminddb.open_database(str(p), maxminddb.MODE_MMAP)  # type: ignore[assignment]
    try:
        return CountryDB(path)
    finally:
        geo_country._open_reader = original  # type: ignore[assignment]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--addresses", type=int, default=20000, help="distinct addresses per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (each with fresh addresses); numbers pool them")
    ap.add_argument("--peer-addresses", type=int, default=5000, help="addresses per round for the pure-Python peer")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="results directory")
    args = ap.parse_args()
    now = time.time()
    dbs = {"GeoLite2-City (maxminddb-geolite2)": bundled_geolite2(), "GeoIP2-City-Test": TEST_DB}
    results: dict[str, Any] = {"machine": {"python": platform.python_version(), "nproc": os.cpu_count(),
                                           "cpu": platform.processor() or platform.machine(),
                                           "loadavg_before": os.getloadavg()},
                               "addresses_per_round": args.addresses, "rounds": args.rounds, "databases": {}}
    for name, path in dbs.items():
        if path is None:
            print(f"skipping {name}: not installed", file=sys.stderr)
            continue
        path.read_bytes()  # in the page cache, as a serving node's database soon is
        t0 = time.perf_counter()
        db = CountryDB(path)
        open_ms = (time.perf_counter() - t0) * 1000
        peer = pure_python(path)
        pooled: dict[str, list[int]] = {"lookup+decide": [], "address+lookup+decide": [], "peer lookup+decide": []}
        found = 0
        for r in range(args.rounds):
            ips = addresses(args.addresses, seed=r)
            headers = [[("X-Forwarded-For", f"{ip}, 10.9.9.9")] for ip in ips]
            fn = lookup_decide(db, now)
            for ip in addresses(2000, seed=1000 + r):  # warm-up on other addresses, for both readers
                fn(ip)
                lookup_decide(peer, now)(ip)
            gc.collect()
            pooled["lookup+decide"] += measure(fn, ips)
            pooled["address+lookup+decide"] += measure(with_address(db, now), headers)
            pooled["peer lookup+decide"] += measure(lookup_decide(peer, now), ips[:args.peer_addresses])
            found += sum(1 for ip in ips if db.lookup(ip) is not None)
        stats = {k: percentiles(v) for k, v in pooled.items()}
        results["databases"][name] = {
            "database_type": db.database_type, "open_and_validate_ms": open_ms,
            "found_share": found / (args.addresses * args.rounds), "calls": stats,
            "peer_over_legato_p99": stats["peer lookup+decide"]["p99_us"] / stats["lookup+decide"]["p99_us"],
        }
        db.close()
        peer.close()
    results["machine"]["loadavg_after"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "geo_decision.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["# Geo decision cost: country lookup + licence decision", "",
             (f"In process, one call timed at a time, {args.rounds} x {args.addresses} distinct addresses per database "
             f"(80% random IPv4, 10% random IPv6, 10% known test addresses); Python "
             f"{results['machine']['python']}, {results['machine']['nproc']} cores ({results['machine']['cpu']}), "
             f"load average before {results['machine']['loadavg_before'][0]:.2f}. Target: lookup + decide p99 < 50 µs."),
             "", "| database | call | p50 µs | p90 µs | p99 µs | p99.9 µs | mean µs |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, d in results["databases"].items():
        for call, s in d["calls"].items():
            lines.append(f"| {name} | {call} | {s['p50_us']:.1f} | {s['p90_us']:.1f} | {s['p99_us']:.1f} | "
                         f"{s['p999_us']:.1f} | {s['mean_us']:.1f} |")
    lines.append("")
    for name, d in results["databases"].items():
        lines.append(f"- {name}: {d['found_share']:.0%} of the addresses found; open + validation "
                     f"{d['open_and_validate_ms']:.0f} ms; the pure-Python reader (peer) is "
                     f"{d['peer_over_legato_p99']:.1f}x Legato's p99.")
    lines.append("")
    lines.append("\"peer\" is the same CountryDB and decision on maxminddb's pure-Python MODE_MMAP reader "
                 "(fewer addresses per round); Legato uses libmaxminddb through the C extension (MODE_MMAP_EXT, "
                 "also memory-mapped).")
    (args.out / "geo_decision.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
