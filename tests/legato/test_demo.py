"""legato/demo.py: `legato demo` runs the whole story and says how it went."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import legato


def test_demo_plays_protected_tracks_through_the_director_and_reports_a_load_run(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    proc = legato("demo", "--dir", str(demo), "--once", "--seconds", "14", "--players", "12",
                  "--load-seconds", "10", timeout=600)
    out = proc.stdout
    for step in range(1, 8):
        assert f"{step}/7 " in out, out
    assert "ok  14." in out  # ffmpeg decoded the protected stream through the director, full length
    assert "0 errors" in out and "start-up p50" in out and "rebuffer ratio" in out and "origin fetches" in out
    results = json.loads((demo / "report" / "results.json").read_text())
    assert results["errors"] == 0 and results["listens_started"] > 0
    assert results["tiers"]["edge"]["hit_ratio"] is not None
    assert {p.name for p in (demo / "report").iterdir()} >= {"report.md", "results.json", "startup_cdf.png",
                                                              "throughput_hit_ratio.png"}
    # secrets stay private, and outside the served store
    assert (demo / "keys" / "master.key").stat().st_mode & 0o077 == 0
    assert not any(p.suffix in (".key", ".pem", ".sqlite") for p in (demo / "store").rglob("*"))
    # the store holds only protected renditions: nothing decryptable in the clear
    track = demo / "store" / "tracks" / "sunrise"
    assert {p.name for p in track.iterdir() if p.is_dir()} == {"hls-aes128", "cenc"}
    assert os.access(demo / "report" / "report.md", os.R_OK)


def test_demo_refuses_a_bad_topology_file_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "topology.toml"
    bad.write_text("[origin\n")
    proc = legato("demo", "--dir", str(tmp_path / "demo"), "--once", "--players", "0", "--seconds", "3",
                  "--topology", str(bad), check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and str(bad) in proc.stderr
