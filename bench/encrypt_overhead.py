"""What encryption adds to packaging: `legato package --protect both` against `--protect none`.

One synthesised source (44.1 kHz stereo 24-bit FLAC, ``--seconds`` long) is
packaged by the real command into a fresh store, clear and protected, in
alternating rounds (none, both, both, none, none, both, ...: each variant runs
first as often as second, so drift in the machine's load hits both alike);
medians are reported.  ``both`` is the command's default: every rendition is
written twice (HLS AES-128 and CENC), so the overhead includes the second copy
of every segment, not only the cipher.  The key store is a real one (created
in the scratch directory; the track's key is minted in the first protected run
and re-used after, as a re-packaging run would).

A second, finer measurement times only the step that changes, the re-cut
into CMAF segments (``packager.pipeline.cut_rendition``), in this process on
the same ffmpeg output, for each output set (clear, hls-aes128, cenc, both),
alternating likewise; ffmpeg's encoding time, which dominates packaging and
is the same for every variant, is out of that number.

    python bench/encrypt_overhead.py                      # 60 s source, 3 rounds each
    python bench/encrypt_overhead.py --seconds 20 --rounds 2 --out /tmp/b   # quick look

Results: OUT/encrypt_overhead.json (every number) and OUT/encrypt_overhead.md.
Target: wall time of ``both`` within 10% of ``none`` (ratio of medians <= 1.10).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.10
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
VARIANTS = ("none", "both")
CUT_OUTPUTS: dict[str, tuple[str | None, ...]] = {
    "clear": (None,), "hls-aes128": ("hls-aes128",), "cenc": ("cenc",), "both": ("hls-aes128", "cenc"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="source length in seconds (default: 60)")
    p.add_argument("--rounds", type=int, default=3, help="timed runs of each variant (default: 3, at least 1)")
    p.add_argument("--cut-rounds", type=int, default=5, help="in-process re-cut timings per output set (default: 5)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results directory (default: {DEFAULT_OUT})")
    p.add_argument("--workdir", type=Path, default=None,
                   help="scratch directory (default: a new temporary directory, removed after)")
    return p


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def order(rounds: int) -> list[str]:
    """none, both, both, none, none, both, ...: each variant first in half the pairs."""
    out: list[str] = []
    for k in range(rounds):
        out += list(VARIANTS if k % 2 == 0 else reversed(VARIANTS))
    return out


def package(src: Path, store: Path, protect: str, keys_config: Path) -> tuple[float, float]:
    """(wall s, CPU s of the command and its ffmpeg) of one `legato package` run into a fresh store."""
    shutil.rmtree(store, ignore_errors=True)
    cpu, t = children_cpu(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "legato.cli", "package", str(src), "--store", str(store),
                           "--track-id", "bench", "--no-progress", "--protect", protect,
                           "--keys-config", str(keys_config)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0 or "1 packaged" not in proc.stdout:
        raise SystemExit(f"legato package --protect {protect} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return wall, children_cpu() - cpu


def cut_timings(src: Path, work: Path, rounds: int) -> dict[str, dict[str, float]]:
    """Median wall and CPU of re-cutting every rendition, per output set, on one ffmpeg output."""
    from drm.keys import new_content_key
    from packager import pipeline, plan, transcode
    from packager.ladder import LadderConfig
    from packager.probe import probe

    ladder = LadderConfig()
    source = probe(src)
    fmt = plan.output_format(source.sample_rate, source.channels, source.bits, source.lossless)
    encoded = work / "encoded"
    encoded.mkdir()
    measured = transcode.run(transcode.command(src, ladder, fmt, encoded), source.duration)
    total = round(measured.samples * fmt.aac_rate / source.sample_rate)
    points = plan.boundaries(total, ladder.segment_duration, fmt.aac_rate)
    key = new_content_key()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in CUT_OUTPUTS}
    names = list(CUT_OUTPUTS)
    for k in range(rounds + 1):  # the first round warms the page cache and is not counted
        for name in (names if k % 2 == 0 else names[::-1]):
            staging = work / f"cut-{name}"
            staging.mkdir()
            cpu, t = time.process_time(), time.perf_counter()
            for r in ladder.rendition:
                pipeline.cut_rendition(encoded / f"{r.id}.mp4", staging, r.id, r.codec, r.bitrate, fmt, points, 2,
                                       CUT_OUTPUTS[name], key)
            wall, own = time.perf_counter() - t, time.process_time() - cpu
            shutil.rmtree(staging)
            if k:
                samples[name].append((wall, own))
    return {name: {"wall_s": statistics.median(w for w, _ in xs), "cpu_s": statistics.median(c for _, c in xs)}
            for name, xs in samples.items()}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rounds < 1 or args.cut_rounds < 1 or args.seconds <= 0:
        raise SystemExit("--rounds and --cut-rounds must be at least 1, --seconds positive")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.package_vs_ffmpeg import machine
    from packager.samples import write_sample

    work = args.workdir or Path(tempfile.mkdtemp(prefix="legato-bench-enc-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        src = write_sample(work / "src.flac", args.seconds, style="sunrise", title="Bench")
        secrets = work / "secrets"
        secrets.mkdir()
        (secrets / "master.key").write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        keys_config = secrets / "keys.toml"
        keys_config.write_text(f'[keys]\nstore = "{secrets / "keys.db"}"\n'
                               f'master_key_file = "{secrets / "master.key"}"\n')
        load_before = os.getloadavg()
        runs: list[dict[str, object]] = []
        sizes: dict[str, int] = {}
        for i, protect in enumerate(order(args.rounds), start=1):
            wall, cpu = package(src, work / "store", protect, keys_config)
            sizes[protect] = sum(p.stat().st_size for p in (work / "store").rglob("*") if p.is_file())
            print(f"run {i}: --protect {protect}: {wall:.2f} s wall, {cpu:.2f} s CPU", file=sys.stderr)
            runs.append({"run": i, "protect": protect, "wall_s": round(wall, 4), "cpu_s": round(cpu, 4)})
        shutil.rmtree(work / "store", ignore_errors=True)
        print("timing the re-cut step in process", file=sys.stderr)
        cuts = cut_timings(src, work, args.cut_rounds)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    med = {v: {k: statistics.median(float(r[k]) for r in runs if r["protect"] == v)  # type: ignore[arg-type]
               for k in ("wall_s", "cpu_s")} for v in VARIANTS}
    ratio_wall = med["both"]["wall_s"] / med["none"]["wall_s"]
    ratio_cpu = med["both"]["cpu_s"] / med["none"]["cpu_s"]
    result = {
        "benchmark": "encrypt_overhead",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": {"seconds": args.seconds, "rounds": args.rounds, "cut_rounds": args.cut_rounds,
                     "source": "write_sample FLAC, 44.1 kHz stereo 24-bit", "order": order(args.rounds)},
        "machine": {**machine(), "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "runs": runs,
        "median": med,
        "store_bytes": sizes,
        "ratio_wall": round(ratio_wall, 4),
        "ratio_cpu": round(ratio_cpu, 4),
        "recut": {k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in cuts.items()},
        # the cost encryption adds, measured where it happens, over a clear run of the whole command
        "recut_added_share": {k: round((cuts[k]["wall_s"] - cuts["clear"]["wall_s"]) / med["none"]["wall_s"], 4)
                              for k in cuts if k != "clear"},
        "target_ratio": TARGET_RATIO,
        "within_target": ratio_wall <= TARGET_RATIO,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "encrypt_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "encrypt_overhead.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:  # type: ignore[type-arg]
    s, m, mach, cut = r["settings"], r["median"], r["machine"], r["recut"]
    lines = [
        "# Encryption overhead of `legato package`",
        "",
        (f"One {s['seconds']:g} s source ({s['source']}), the default ladder (3 AAC + FLAC); {s['rounds']} runs "
         f"of each variant in the order {', '.join(s['order'])}; medians."),
        "",
        "| `--protect` | wall (s) | CPU (s) | store bytes |",
        "| --- | ---: | ---: | ---: |",
        *(f"| `{v}` | {m[v]['wall_s']:.2f} | {m[v]['cpu_s']:.2f} | {r['store_bytes'][v]:,} |" for v in VARIANTS),
        f"| **ratio both / none** | **{r['ratio_wall']:.3f}** | {r['ratio_cpu']:.3f} | |",
        "",
        (f"Target: wall ratio <= {r['target_ratio']} (under 10% overhead) -- "
         f"{'met' if r['within_target'] else 'NOT met'}."),
        "",
        "| run | `--protect` | wall (s) | CPU (s) |",
        "| ---: | --- | ---: | ---: |",
        *(f"| {x['run']} | `{x['protect']}` | {x['wall_s']:.2f} | {x['cpu_s']:.2f} |" for x in r["runs"]),
        "",
        (f"## The re-cut step alone (in process, same ffmpeg output, median of {s['cut_rounds']} after one "
         "warm-up)"),
        "",
        "| outputs | wall (s) | CPU (s) | added wall vs clear | share of a clear `legato package` run |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(f"| {k} | {v['wall_s']:.3f} | {v['cpu_s']:.3f} | +{v['wall_s'] - cut['clear']['wall_s']:.3f} s | "
          f"{100 * r['recut_added_share'].get(k, 0.0):.1f}% |" for k, v in cut.items()),
        "",
        ("Everything else a run does (probe, the ffmpeg encode, manifests, publish) is the same for every "
         "variant but for milliseconds (the key store lookup, a second manifest), so the last column is what "
         "encryption costs end to end, measured where it happens; the "
         "whole-command medians above carry the machine's noise (a shared 2-core box: runs of the same variant "
         "differ by more than that). `both` writes every rendition twice (HLS AES-128 and CENC). CENC costs "
         "more than HLS AES-128: one AES-CTR call per sample (a few thousand per track) against one AES-CBC "
         "call per segment."),
        "",
        (f"Machine: {mach['nproc']} CPUs ({mach['cpu_model']}), ffmpeg {mach['ffmpeg']}, Python {mach['python']}, "
         f"{mach['platform']}; load average {mach['loadavg_before'][0]:.2f} before, {mach['loadavg_after'][0]:.2f} "
         f"after (shared machine); Legato {mach['legato_commit']}; {r['date']}."),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
