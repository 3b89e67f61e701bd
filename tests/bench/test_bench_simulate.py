"""bench trace / simulate / plan: the model, the readers, the topology simulator, libCacheSim, the CLI."""

from __future__ import annotations

import gzip
import itertools
import json
import math
from pathlib import Path

import pytest

from bench import plan as pl
from bench.simulate import BenchSpec, Topology, run_bench, run_topology
from bench.trace import (
    Trace,
    TraceError,
    TraceModel,
    generate,
    model_with,
    read_trace,
    write_csv,
)
from cache.sim import MusicWorkload, simulate

SMALL = TraceModel(MusicWorkload(tracks=400, listens=1500, listen_rate=2.0), clients=300)


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Trace]:
    path = tmp_path_factory.mktemp("trace") / "trace.csv.gz"
    write_csv(path, generate(SMALL, seed=3), header={"model": SMALL.to_json(), "seed": 3})
    return path, read_trace(path)


# --- the model ------------------------------------------------------------------------


def test_generation_is_deterministic_and_time_ordered() -> None:
    a = list(generate(SMALL, seed=5))
    assert a == list(generate(SMALL, seed=5))
    assert a != list(generate(SMALL, seed=6))
    assert all(x[1].time <= y[1].time for x, y in itertools.pairwise(a))
    assert {c for c, _ in a} <= {f"c{i}" for i in range(SMALL.clients)}


def test_surge_puts_one_deep_track_on_top_for_its_window() -> None:
    model = model_with(SMALL, listens=3000, surge_at=300.0, surge_seconds=600.0, surge_share=0.3)
    track = f"/tracks/t{model.surge_track:06d}/"
    inits = [(r.time, r.key) for _, r in generate(model, seed=1) if r.key.endswith("/init.mp4")]
    inside = [k for t, k in inits if 300 <= t < 900]
    outside = [k for t, k in inits if not 290 <= t < 920]
    assert sum(k.startswith(track) for k in inside) / len(inside) > 0.2
    assert sum(k.startswith(track) for k in outside) / len(outside) < 0.02


def test_diurnal_cycle_and_churn() -> None:
    model = model_with(SMALL, listens=6000, listen_rate=0.5, diurnal=0.8, diurnal_period=4000.0,
                       diurnal_peak=1000.0, churn=0.5, churn_interval=100.0)
    starts = [r.time for _, r in generate(model, seed=2) if r.key.endswith("/init.mp4")]
    peak = sum(1 for t in starts if 500 <= t % 4000 < 1500)
    trough = sum(1 for t in starts if 2500 <= t % 4000 < 3500)
    assert peak > 3 * trough
    new = {r.key.split("/")[2] for _, r in generate(model, seed=2)} - {f"t{n:06d}" for n in range(1, 401)}
    assert new, "new releases are heard"


def test_model_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="diurnal"):
        TraceModel(diurnal=1.5)
    with pytest.raises(ValueError, match="clients"):
        TraceModel(clients=0)
    assert TraceModel.from_json(SMALL.to_json()) == SMALL


# --- readers ------------------------------------------------------------------------------


def test_csv_round_trip_with_model_header(small_trace: tuple[Path, Trace]) -> None:
    path, trace = small_trace
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    rows = list(generate(SMALL, seed=3))
    assert len(trace) == len(rows) and trace.malformed == 0
    assert trace.model is not None and trace.model["seed"] == 3
    first = next(trace.requests())
    assert (first.key, first.size) == (rows[0][1].key, rows[0][1].size)
    assert abs(first.time - rows[0][1].time) < 1e-3


def test_access_logs_json_and_clf(tmp_path: Path) -> None:
    json_log = tmp_path / "access.json"
    lines = [
        {"time": "2026-11-22T04:09:49.123Z", "peer": "10.0.0.1", "method": "GET",
         "path": "/tracks/t1/aac-160k/seg-00001.m4s", "status": 200, "bytes": 120_300},
        {"time": "2026-11-22T04:09:50.000Z", "peer": "10.0.0.2", "method": "GET",
         "path": "/tracks/t1/aac-160k/seg-00001.m4s", "status": 206, "bytes": 100},
        {"time": "2026-11-22T04:09:51.000Z", "peer": "10.0.0.2", "method": "GET", "path": "/metrics",
         "status": 200, "bytes": 900},
        {"time": "2026-11-22T04:09:48.000Z", "peer": "10.0.0.3", "method": "GET",
         "path": "/tracks/t1/aac-160k/seg-00002.m4s", "status": 304, "bytes": 0},
    ]
    json_log.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n")
    trace = read_trace(json_log)
    assert [r.key for r in trace.requests()] == ["/tracks/t1/aac-160k/seg-00001.m4s"] * 2
    assert [r.size for r in trace.requests()] == [120_300, 120_300]  # the 206 sized by the full answer
    assert trace.skipped == 2 and trace.malformed == 1 and trace.examples[0].startswith("line 5:")

    clf = tmp_path / "access.log"
    clf.write_text(
        '10.0.0.1 - - [22/Nov/2026:04:09:49 +0000] "GET /tracks/t1/flac/seg-00003.m4s?token=abc HTTP/1.1" 200 700000 '
        '"-" "hls.js"\n'
        '10.0.0.1 - - [22/Nov/2026:04:09:50 +0000] "GET /keys/0123456789abcdef0123456789abcdef HTTP/1.1" 200 16\n'
        "garbage line\n"
        '10.0.0.2 - - [22/Nov/2026:04:09:47 +0000] "HEAD /tracks/t1/flac/seg-00003.m4s HTTP/1.1" 200 -\n')
    trace = read_trace(clf)
    assert [(r.key, r.size) for r in trace.requests()] == [("/tracks/t1/flac/seg-00003.m4s", 700000)] * 2
    assert trace.times[0] < trace.times[1]  # sorted by time
    assert (trace.skipped, trace.malformed) == (1, 1)


def test_unreadable_traces_fail_with_line_numbers(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("time,client,object,size\n1.0,c1,/tracks/t1/aac-96k/seg-00001.m4s,notanumber\n"
                   "2.0,c1\n3.0,c1,/tracks/../etc/passwd,10\n")
    with pytest.raises(TraceError, match=r"no request could be read \(3 malformed line\(s\): line 2: .*line 3: .*line 4: bad path"):
        read_trace(bad)
    with pytest.raises(TraceError, match="no such file"):
        read_trace(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(TraceError, match="empty"):
        read_trace(tmp_path / "empty.csv")
    (tmp_path / "broken.csv.gz").write_bytes(gzip.compress(b"time,client,object,size\n")[:-6])
    with pytest.raises(TraceError, match="broken.csv.gz"):
        read_trace(tmp_path / "broken.csv.gz")


# --- the simulator -----------------------------------------------------------------------


def test_one_edge_topology_is_cache_sim(small_trace: tuple[Path, Trace]) -> None:
    _, trace = small_trace
    size = trace.working_set_bytes() // 20
    for policy in ("lru", "listen"):
        topo = run_topology(trace, Topology(edge_size=size, edge_policy=policy))
        ref = simulate(policy, trace.requests(), size)
        assert (topo.edge.hits, topo.edge.byte_hits, topo.edge.evictions) == (ref.hits, ref.byte_hits, ref.evictions)
        assert topo.origin_bytes == ref.byte_misses


def test_tiers_add_up(small_trace: tuple[Path, Trace]) -> None:
    _, trace = small_trace
    ws = trace.working_set_bytes()
    r = run_topology(trace, Topology(edge_size=ws // 50, edge_policy="lru", edges=3, regionals=2,
                                     regional_size=ws // 5, regional_policy="lru", prefetch=2), interval=60)
    assert r.edge.requests == len(trace)
    assert r.regional.requests == (r.edge.requests - r.edge.hits) + r.prefetched
    assert r.origin_requests == r.regional.requests - r.regional.hits
    assert r.origin_bytes == r.regional.bytes - r.regional.byte_hits
    assert 0 < r.prefetch_used <= r.prefetched
    assert sum(i.requests for i in r.series) == len(trace)
    assert sum(i.origin_bytes for i in r.series) == r.origin_bytes
    # a bigger regional tier never sends more to origin
    big = run_topology(trace, Topology(edge_size=ws // 50, edge_policy="lru", edges=3, regionals=2,
                                       regional_size=ws, regional_policy="lru", prefetch=2))
    assert big.origin_bytes <= r.origin_bytes


def test_listen_keeps_prefetched_segments_for_the_listener(small_trace: tuple[Path, Trace]) -> None:
    """With prefetch on, listen must not do worse than LRU (it did: prefetches were judged as requests)."""
    _, trace = small_trace
    ws = trace.working_set_bytes()
    runs = {p: run_topology(trace, Topology(edge_size=ws // 20, edge_policy=p, prefetch=2)) for p in ("lru", "listen")}
    assert runs["listen"].prefetch_used >= 0.8 * runs["lru"].prefetch_used
    assert runs["listen"].origin_bytes <= 1.02 * runs["lru"].origin_bytes


def test_our_lru_matches_libcachesim_lru(small_trace: tuple[Path, Trace]) -> None:
    """The simulator's check against the reference: same trace, same size, hit ratios within 0.5%."""
    pytest.importorskip("libcachesim")
    from bench.libcachesim_peer import OracleTrace, run_peers

    _, trace = small_trace
    for fraction in (0.01, 0.05, 0.2):
        size = int(trace.working_set_bytes() * fraction)
        ours = simulate("lru", trace.requests(), size)
        with OracleTrace(trace.times, trace.objects, trace.sizes) as oracle:
            (peer,), _ = run_peers(oracle, size, ["LRU"])
        assert abs(ours.hit_ratio - peer.hit_ratio) <= 0.005 * peer.hit_ratio, (fraction, ours.hit_ratio, peer)
        assert abs(ours.byte_hit_ratio - peer.byte_hit_ratio) <= 0.005 * peer.byte_hit_ratio


def test_bench_compares_with_belady(small_trace: tuple[Path, Trace]) -> None:
    pytest.importorskip("libcachesim")
    _, trace = small_trace
    size = trace.working_set_bytes() // 20
    out = run_bench(trace, BenchSpec(sizes=(size,), labels=("5%",), policies=("lru", "sieve"),
                                     peers=("LRU", "SIEVE", "Belady")))
    peers = {p["policy"]: p for p in out["edge_alone"]["libcachesim"]}
    ours = {o["policy"]: o for o in out["edge_alone"]["ours"]}
    assert peers["Belady"]["hit_ratio"] >= max(o["hit_ratio"] for o in ours.values())
    assert abs(ours["sieve"]["hit_ratio"] - peers["SIEVE"]["hit_ratio"]) < 0.005
    assert out["speed"]["edge_alone_requests_per_cpu_minute"]["lru"] > 1_000_000


# --- plan -------------------------------------------------------------------------------


def test_plan_numbers_for_the_design_example() -> None:
    curve = pl.HitCurve(((0.001, 0.6, 0.5), (0.01, 0.85, 0.8), (0.1, 0.95, 0.93)), ((0.01, 0.5),), "test")
    inputs = pl.PlanInputs(users=500_000_000, streams=50_000_000, mean_kbps=256, tracks=100_000_000, zipf_s=0.9,
                           regions={"eu": 0.5, "na": 0.5}, edge_gbps=100, utilisation=0.8, spare_edges=1,
                           target_edge_hit=0.8)
    out = pl.plan(inputs, curve)["outputs"]
    assert out["demand_gbps"] == pytest.approx(12_800)  # 50M x 256 kbit/s = 12.8 Tbit/s
    assert out["edges_total"] == 2 * (math.ceil(6400 / 80) + 1)
    assert out["edge_cache_fraction"] == pytest.approx(0.01)
    assert out["ssd_per_edge_bytes"] == pytest.approx(0.01 * inputs.catalogue_bytes)
    assert out["egress_gbps"]["regional"] == pytest.approx(12_800 * 0.2)
    assert out["egress_gbps"]["origin"] == pytest.approx(12_800 * 0.2 * 0.5)
    # 100M tracks x 210 s x (96+160+320+930) kbit/s / 8, +1%
    assert out["origin_storage_bytes"] == pytest.approx(100e6 * 210 * 1506e3 / 8 * 1.01)
    # more SSD never lowers the hit ratio
    assert curve.at(0.05)[1] >= curve.at(0.01)[1]
    with pytest.raises(pl.PlanError, match="add up to 1"):
        pl.PlanInputs(users=1, streams=1, mean_kbps=1, tracks=1, zipf_s=0.9, regions={"eu": 0.5}, edge_gbps=1)


def test_edge_throughput_comes_from_the_real_edge_rows_of_a_serving_benchmark(tmp_path: Path) -> None:
    rows = [{"legato": "legato-sendfile-edge", "size": 240_000, "legato_cpu_us": 60.0},
            {"legato": "legato-sendfile-files", "size": 240_000, "legato_cpu_us": 30.0}]
    path = tmp_path / "serve_vs_nginx.json"
    path.write_text(json.dumps({"summary": rows}))
    gbps, source = pl.edge_gbps_from_serving(path, cores=1, nic_gbps=100)
    assert gbps == pytest.approx(240_000 * 8 / 60e-6 / 1e9)  # 32 Gbit/s per core, not the files variant's 64
    assert "per core x 1 cores" in source
    path.write_text(json.dumps({"summary": rows[1:]}))  # an older file without edge rows: all rows
    assert pl.edge_gbps_from_serving(path, cores=1, nic_gbps=10)[0] == 10  # capped by the NIC
    path.write_text("{}")
    with pytest.raises(pl.PlanError, match="not a serving benchmark"):
        pl.edge_gbps_from_serving(path, cores=1, nic_gbps=10)


# --- the command line --------------------------------------------------------------------


def test_cli_trace_simulate_plan(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = cli("bench", "trace", "--tracks", "300", "--listens", "600", "--rate", "2", "--clients", "100",
              "--surge-at", "60", "--out", str(tmp_path / "t"))
    assert "wrote" in out.stdout and (tmp_path / "t" / "requests.png").stat().st_size > 1000
    sim = tmp_path / "s"
    cli("bench", "simulate", "--trace", str(tmp_path / "t" / "trace.csv"), "--cache-size", "2%,10%",
        "--policy", "lru,listen", "--edges", "2", "--regionals", "2", "--prefetch", "1",
        "--peers", "LRU,Belady", "--jobs", "2", "--out", str(sim))
    results = json.loads((sim / "results.json").read_text())
    assert {t["topology"]["edge_policy"] for t in results["bench"]["topology"]} == {"lru", "listen"}
    report = (sim / "report.md").read_text()
    assert "hit_ratio_vs_size.png" in report and (sim / "hit_ratio_vs_size.png").exists()
    assert (sim / "over_time.png").exists()
    plan = cli("bench", "plan", "--users", "500M", "--streams", "50M", "--bitrate", "256", "--tracks", "100M",
               "--edge-gbps", "100", "--simulate-results", str(sim / "results.json"), "--policy", "lru",
               "--out", str(tmp_path / "p"))
    assert "demand 12.80 Tbit/s" in plan.stdout
    doc = json.loads((tmp_path / "p" / "results.json").read_text())
    assert doc["outputs"]["edges_total"] >= 4 * math.ceil(12_800 * 0.1 / 70)
    assert (tmp_path / "p" / "egress.png").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["simulate", "--trace", "MISSING"], "no such file"),
    (["simulate", "--trace", "BAD"], "no request could be read (1 malformed line(s): line 2:"),
    (["simulate", "--trace", "BAD", "--cache-size", "lots"], "is not a size"),
    (["simulate", "--trace", "BAD", "--cache-size", "150%"], "must be in (0, 100]"),
    (["simulate", "--trace", "BAD", "--policy", "fifo"], "unknown policy fifo"),
    (["plan", "--edge-gbps", "10"], "--simulate-results"),
    (["plan", "--edge-gbps", "10", "--simulate-results", "MISSING"], "no such file"),
    (["plan", "--edge-gbps", "10", "--simulate-results", "BAD"], "not JSON"),
    (["plan", "--edge-gbps", "10", "--edge-hit", "0.9", "--edge-ssd", "1T", "--regions", "eu:0.5"], "add up to 1"),
    (["plan", "--streams", "ten"], "is not a count"),
    (["trace", "--diurnal", "2"], "between 0 and 1"),
])
def test_cli_bad_input_is_one_clear_line(cli, tmp_path: Path, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "bad.csv").write_text("time,client,object,size\nnot,a,valid,line\n")
    args = [str(tmp_path / "bad.csv") if a == "BAD" else str(tmp_path / "missing") if a == "MISSING" else a
            for a in args]
    result = cli("bench", *args, "--out", str(tmp_path / "out"), check=False)
    assert result.returncode == 2, result
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "report.md").exists()
