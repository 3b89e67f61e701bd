"""bench/load.py: `legato bench load` against a real small topology, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import legato


def topology(tmp: Path, store: Path) -> Path:
    path = tmp / "topology.toml"
    path.write_text(f'state_dir = "{tmp / "state"}"\n[origin]\nlisten = "127.0.0.1:0"\nstore = "{store}"\n'
                    '[[regional]]\nname = "r1"\n[[regional]]\nname = "r2"\n'
                    '[[edge]]\nname = "e1"\ncache_size = 104857600\n[[edge]]\nname = "e2"\ncache_size = 104857600\n')
    return path


def test_load_run_against_a_topology_reports_every_metric(tmp_path: Path, packaged_store: Path) -> None:
    out = tmp_path / "report"
    proc = legato("bench", "load", "--topology", str(topology(tmp_path, packaged_store)), "--players", "8",
                  "--duration", "8", "--ramp", "1", "--surge-at", "3", "--surge-for", "3", "--speed", "4",
                  "--out", str(out), "--quiet", timeout=300)
    assert "0 errors" in proc.stdout and "report:" in proc.stdout
    r = json.loads((out / "results.json").read_text())
    assert r["errors"] == 0 and r["listens_started"] >= 8
    for group in ("all", "cached", "uncached"):
        assert set(r["startup_ms"][group]) == {"p50", "p95", "p99"}
    assert r["startup_ms"]["all"]["p50"] > 0 and r["startup_ms"]["uncached"]["p50"] is not None
    assert r["rebuffer_ratio"] >= 0 and r["rebuffers"] >= 0 and r["bitrate_switches"] >= 0
    assert 0 < r["edge_hit_ratio"] <= 1
    assert r["tiers"]["edge"]["hit_ratio"] is not None and r["tiers"]["regional"]["results"]
    assert r["tiers"]["origin_segment_fetches"] > 0
    assert r["series"] and r["surge"]["track"] == "sunrise"
    text = (out / "report.md").read_text()
    assert "![start-up CDF](startup_cdf.png)" in text
    assert (out / "startup_cdf.png").stat().st_size > 0 and (out / "throughput_hit_ratio.png").stat().st_size > 0


@pytest.mark.parametrize(("args", "message"), [
    (["--entry", "http://127.0.0.1:9", "--players", "0", "--tracks", "t"], "--players must be positive"),
    (["--entry", "http://127.0.0.1:9"], "--entry needs --tracks"),
    (["--entry", "http://127.0.0.1:9", "--tracks", "t", "--metrics", "cdn=http://x"], "KIND=URL"),
    (["--entry", "http://127.0.0.1:9", "--tracks", "t", "--signing-key", "/nonexistent.pem"], "--signing-key"),
])
def test_bad_arguments_are_refused_clearly(args: list[str], message: str) -> None:
    proc = legato("bench", "load", *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_a_store_without_tracks_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = legato("bench", "load", "--topology", str(topology(tmp_path, tmp_path / "empty")), check=False)
    assert proc.returncode == 2 and "no tracks" in proc.stderr


def test_an_unreachable_entry_counts_errors_and_fails(tmp_path: Path) -> None:
    proc = legato("bench", "load", "--entry", "http://127.0.0.1:9", "--tracks", "t", "--players", "2",
                  "--duration", "2", "--ramp", "0", "--out", str(tmp_path / "r"), "--quiet", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "r" / "results.json").read_text())["errors"] > 0
