"""Legato's packager against plain ffmpeg producing the same ladder.

Both sides start from the same synthesised 44.1 kHz stereo FLAC tracks and
encode the same renditions with the same encoder settings: the plain-ffmpeg
command is built from ``packager.transcode.encoder_args`` and
``packager.plan.output_format``, so the two cannot drift apart.  Plain ffmpeg
is one run per track that decodes once and ``asplit``s into the renditions,
writing ordinary .m4a/.mp4 files: no loudness measurement, no sample count, no
re-cutting into CMAF segments, no manifests, no hashing.  Legato is the real
``legato package`` command on a fresh store.  The difference is the cost of
everything Legato adds on top of encoding.

The two are run alternately (A B A B ...) so that drift in the machine's load
hits both alike; medians are reported.  CPU time is user + system time of the
finished child processes (``resource.getrusage(RUSAGE_CHILDREN)``), which
includes ffmpeg under ``legato``.

    python bench/package_vs_ffmpeg.py                 # 4 tracks of 60-180 s, 3 rounds
    python bench/package_vs_ffmpeg.py --tracks 2 --seconds 30 --repeat 1   # quick look

Results: OUT/package_vs_ffmpeg.json (every number) and OUT/package_vs_ffmpeg.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packager.ladder import LadderConfig
from packager.plan import OutputFormat, output_format
from packager.probe import probe
from packager.samples import PROGRESSIONS, write_sample
from packager.tools import ffmpeg
from packager.transcode import encoder_args

TARGET_RATIO = 1.3
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse_seconds(text: str) -> tuple[float, float]:
    lo, sep, hi = text.partition("-")
    try:
        a, b = float(lo), float(hi) if sep else float(lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected S or MIN-MAX seconds, got {text!r}") from None
    if not 0 < a <= b:
        raise argparse.ArgumentTypeError(f"expected 0 < MIN <= MAX, got {text!r}")
    return a, b


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracks", type=int, default=4, metavar="N", help="number of synthesised tracks (default: 4)")
    p.add_argument("--seconds", type=parse_seconds, default=(60.0, 180.0), metavar="S|MIN-MAX",
                   help="track length; a range spreads the N tracks evenly over it (default: 60-180)")
    p.add_argument("--repeat", type=int, default=3, metavar="R",
                   help="timed rounds; each round runs Legato then plain ffmpeg (default: 3, at least 1)")
    p.add_argument("--warmup", type=int, default=1, metavar="W", help="untimed rounds first (default: 1)")
    p.add_argument("--jobs", type=int, default=1, metavar="J",
                   help="tracks in parallel, on both sides: legato --jobs J / J ffmpeg runs at once (default: 1)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                   help=f"where the .json and .md results go (default: {DEFAULT_OUT})")
    p.add_argument("--breakdown", action="store_true",
                   help="also split Legato's time on the longest track into its parts (ffmpeg command, "
                   "loudness branch, probe, re-cut, hashing, manifests) and report them")
    p.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                   help="scratch directory for tracks and outputs (default: a new temporary directory, removed after)")
    return p


# --- the two sides ---------------------------------------------------------------

def plain_ffmpeg_command(src: Path, ladder: LadderConfig, fmt: OutputFormat, outdir: Path) -> list[str]:
    """One ffmpeg run: decode once, asplit, one plain MP4 per rendition with Legato's encoder settings."""
    n = len(ladder.rendition)
    graph = [f"[0:a:0]asplit={n}" + "".join(f"[s{i}]" for i in range(n))]
    args = [ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src)]
    outputs: list[str] = []
    for i, rendition in enumerate(ladder.rendition):
        label = f"s{i}"
        if rendition.codec == "flac" and fmt.flac_bits == 16:  # Legato dithers here too
            graph.append(f"[s{i}]aresample=dither_method=triangular[d{i}]")
            label = f"d{i}"
        outputs += ["-map", f"[{label}]", "-map_metadata", "-1", "-map_chapters", "-1"]
        for key, value in encoder_args(rendition, fmt).items():
            outputs += [f"-{key}", str(value)]
        outputs.append(str(outdir / f"{src.stem}.{rendition.id}.{'m4a' if rendition.codec == 'aac' else 'mp4'}"))
    return args + ["-filter_complex", ";".join(graph)] + outputs


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_legato(tracks: list[Path], store: Path, jobs: int) -> tuple[float, float]:
    cpu, t = children_cpu(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "legato.cli", "package", *map(str, tracks), "--store", str(store),
                           "--jobs", str(jobs), "--no-progress", "--protect", "none"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0 or f"{len(tracks)} packaged, 0 skipped, 0 failed" not in proc.stdout:
        raise SystemExit(f"legato package failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return wall, children_cpu() - cpu


def run_plain(commands: list[list[str]], jobs: int) -> tuple[float, float]:
    def one(cmd: list[str]) -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"ffmpeg failed ({proc.returncode}): {proc.stderr[-2000:]}")

    cpu, t = children_cpu(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, commands))
    return time.perf_counter() - t, children_cpu() - cpu


# --- where Legato's time goes -----------------------------------------------------

def _timed(fn, *a, **k):  # type: ignore[no-untyped-def]
    """(result, wall s, own CPU s, children CPU s) of one call."""
    own, kids, t = time.process_time(), children_cpu(), time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t, time.process_time() - own, children_cpu() - kids


def _ffmpeg_only(args: list[str]) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"ffmpeg failed: {proc.stderr[-2000:]}")


def breakdown(src: Path, fmt: OutputFormat, ladder: LadderConfig, work: Path) -> dict[str, object]:
    """Time the parts of packaging one track, in this process, with the packager's own functions."""
    import xxhash

    from packager import pipeline, transcode

    parts: dict[str, dict[str, float]] = {}

    def record(name: str, wall: float, own: float, kids: float) -> None:
        slot = parts.setdefault(name, {"wall_s": 0.0, "python_cpu_s": 0.0, "ffmpeg_cpu_s": 0.0, "calls": 0})
        slot["wall_s"] += wall
        slot["python_cpu_s"] += own
        slot["ffmpeg_cpu_s"] += kids
        slot["calls"] += 1

    def wrap(module, name: str, label: str) -> None:  # type: ignore[no-untyped-def]
        original = getattr(module, name)

        def timed(*a, **k):  # type: ignore[no-untyped-def]
            out, wall, own, kids = _timed(original, *a, **k)
            record(label, wall, own, kids)
            return out
        setattr(module, name, timed)
        restore.append((module, name, original))

    # Reference points, each a separate ffmpeg run on the same source.
    plain = work / "bd-plain"
    plain.mkdir()
    _, wall, own, kids = _timed(_ffmpeg_only, plain_ffmpeg_command(src, ladder, fmt, plain))
    reference = {"plain_ffmpeg_ladder": {"wall_s": wall, "ffmpeg_cpu_s": kids}}
    base = [ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "info", "-i", str(src)]
    _, wall, own, kids = _timed(_ffmpeg_only, base + ["-f", "null", "-"])
    reference["decode_only"] = {"wall_s": wall, "ffmpeg_cpu_s": kids}
    _, wall, own, kids = _timed(_ffmpeg_only, base + [
        "-af", "astats=measure_perchannel=none:measure_overall=Number_of_samples,ebur128=framelog=verbose:peak=true",
        "-f", "null", "-"])
    reference["decode_plus_loudness_branch"] = {"wall_s": wall, "ffmpeg_cpu_s": kids}
    _, wall, own, kids = _timed(_ffmpeg_only, base + [
        "-af", "astats=measure_perchannel=none:measure_overall=Number_of_samples,ebur128",
        "-f", "null", "-"])
    reference["decode_plus_loudness_without_true_peak"] = {"wall_s": wall, "ffmpeg_cpu_s": kids}
    shutil.rmtree(plain)

    # Legato's own pipeline, with its steps timed.
    restore: list[tuple[object, str, object]] = []
    wrap(pipeline, "source_hash", "source hash (xxh3-128 of the source file)")
    wrap(pipeline, "probe", "probe (mutagen + ffprobe)")
    wrap(transcode, "run", "ffmpeg: the one transcode + loudness run")
    wrap(pipeline, "cut_rendition", "re-cut into CMAF segments (parse, write, xxh3)")
    wrap(pipeline, "write_track_files", "manifests + track.json")
    wrap(pipeline, "publish", "publish (rename)")
    store = work / "bd-store"
    try:
        outcomes, wall, own, kids = _timed(pipeline.package_batch, [src], store, ladder)
    finally:
        for module, name, original in restore:
            setattr(module, name, original)
    assert outcomes[0].status == "packaged", outcomes
    total = {"wall_s": wall, "python_cpu_s": own, "ffmpeg_cpu_s": kids}
    # Hashing alone, over the bytes re-cut wrote (already inside the re-cut time above).
    blobs = [p.read_bytes() for p in (store / "tracks").rglob("*") if p.suffix in (".m4s", ".mp4")]
    t = time.perf_counter()
    for b in blobs:
        xxhash.xxh3_64_hexdigest(b)
    hashing = {"wall_s": time.perf_counter() - t, "bytes": sum(map(len, blobs))}
    shutil.rmtree(store)
    accounted = sum(v["wall_s"] for v in parts.values())
    parts["other (CLI-free package_batch overhead)"] = {"wall_s": total["wall_s"] - accounted}
    rnd = lambda d: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}
    return {
        "track": src.name,
        "reference_ffmpeg_runs": {k: rnd(v) for k, v in reference.items()},
        "legato_package_one_in_process": rnd(total),
        "legato_parts": {k: rnd(v) for k, v in parts.items()},
        "xxh3_of_all_segments": rnd(hashing),
    }


# --- the machine -------------------------------------------------------------------

def machine() -> dict[str, object]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    version = subprocess.run([ffmpeg(), "-hide_banner", "-version"], capture_output=True, text=True,
                             check=False).stdout
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model,
        "ffmpeg": version.split("\n", 1)[0].removeprefix("ffmpeg version ").split(" Copyright")[0],
        "ffmpeg_path": ffmpeg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "legato_commit": commit,
    }


# --- main ----------------------------------------------------------------------------

def median(xs: list[float]) -> float:
    return statistics.median(xs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tracks < 1 or args.repeat < 1 or args.jobs < 1 or args.warmup < 0:
        raise SystemExit("--tracks, --repeat and --jobs must be at least 1, --warmup at least 0")
    lo, hi = args.seconds
    lengths = [round(lo + (hi - lo) * i / max(1, args.tracks - 1), 3) for i in range(args.tracks)]
    ladder = LadderConfig()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="legato-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        styles = list(PROGRESSIONS)
        print(f"synthesising {args.tracks} tracks ({', '.join(f'{s:g}' for s in lengths)} s) in {work}",
              file=sys.stderr)
        tracks = [write_sample(work / "src" / f"track{i + 1}.flac", s, style=styles[i % len(styles)],
                               title=f"Bench {i + 1}") for i, s in enumerate(lengths)]
        formats = {}
        for t in tracks:
            src = probe(t)
            formats[t] = output_format(src.sample_rate, src.channels, src.bits, src.lossless)
        audio_seconds = sum(lengths)
        load_before = os.getloadavg()
        runs: list[dict[str, object]] = []
        rounds = args.warmup + args.repeat
        for k in range(rounds):
            timed = k >= args.warmup
            label = f"round {k - args.warmup + 1}/{args.repeat}" if timed else f"warm-up {k + 1}/{args.warmup}"
            store = work / "store"
            plain = work / "plain"
            for d in (store, plain):
                shutil.rmtree(d, ignore_errors=True)
            plain.mkdir()
            lw, lc = run_legato(tracks, store, args.jobs)
            legato_bytes = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
            shutil.rmtree(store)
            pw, pc = run_plain([plain_ffmpeg_command(t, ladder, formats[t], plain) for t in tracks], args.jobs)
            plain_bytes = sum(p.stat().st_size for p in plain.rglob("*") if p.is_file())
            shutil.rmtree(plain)
            print(f"{label}: legato {lw:.2f} s wall {lc:.2f} s cpu | ffmpeg {pw:.2f} s wall {pc:.2f} s cpu | "
                  f"ratio {lw / pw:.3f}", file=sys.stderr)
            if timed:
                runs.append({"round": k - args.warmup + 1, "legato_wall_s": round(lw, 4), "legato_cpu_s": round(lc, 4),
                             "ffmpeg_wall_s": round(pw, 4), "ffmpeg_cpu_s": round(pc, 4),
                             "ratio_wall": round(lw / pw, 4), "ratio_cpu": round(lc / pc, 4),
                             "legato_cpu_per_wall": round(lc / lw, 3), "ffmpeg_cpu_per_wall": round(pc / pw, 3),
                             "legato_output_bytes": legato_bytes,
                             "ffmpeg_output_bytes": plain_bytes})
        example = plain_ffmpeg_command(tracks[0], ladder, formats[tracks[0]], Path("OUT"))
        parts = None
        if args.breakdown:
            longest = max(tracks, key=lambda t: lengths[tracks.index(t)])
            print(f"breakdown on {longest.name}", file=sys.stderr)
            parts = breakdown(longest, formats[longest], ladder, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    lw = median([float(r["legato_wall_s"]) for r in runs])  # type: ignore[arg-type]
    pw = median([float(r["ffmpeg_wall_s"]) for r in runs])  # type: ignore[arg-type]
    lc = median([float(r["legato_cpu_s"]) for r in runs])  # type: ignore[arg-type]
    pc = median([float(r["ffmpeg_cpu_s"]) for r in runs])  # type: ignore[arg-type]
    paired = [float(r["ratio_wall"]) for r in runs]  # type: ignore[arg-type]
    result = {
        "benchmark": "package_vs_ffmpeg",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": {"tracks": args.tracks, "track_seconds": lengths, "audio_seconds": audio_seconds,
                     "repeat": args.repeat, "warmup": args.warmup, "jobs": args.jobs,
                     "source": "write_sample FLAC, 44.1 kHz stereo 24-bit",
                     "renditions": [r.id for r in ladder.rendition],
                     "plain_ffmpeg_command_example": [str(a).replace(str(tracks[0].parent), "SRC") for a in example]},
        "machine": {**machine(), "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "runs": runs,
        "median": {"legato_wall_s": lw, "ffmpeg_wall_s": pw, "legato_cpu_s": lc, "ffmpeg_cpu_s": pc,
                   "ratio_wall": round(lw / pw, 4), "ratio_wall_paired": round(median(paired), 4),
                   "ratio_cpu": round(lc / pc, 4),
                   "legato_realtime_x": round(audio_seconds / lw, 2), "ffmpeg_realtime_x": round(audio_seconds / pw, 2)},
        "target_ratio": TARGET_RATIO,
        "within_target": lw / pw <= TARGET_RATIO,
        "breakdown": parts,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "package_vs_ffmpeg.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "package_vs_ffmpeg.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:  # type: ignore[type-arg]
    s, m, mach = r["settings"], r["median"], r["machine"]
    lines = [
        "# Legato packager vs plain ffmpeg",
        "",
        (f"{s['tracks']} tracks ({', '.join(f'{x:g}' for x in s['track_seconds'])} s; {s['audio_seconds']:g} s of audio), "
        f"{s['source']}, ladder {', '.join(s['renditions'])}; --jobs {s['jobs']} on both sides; "
        f"{s['repeat']} alternating rounds (legato, then ffmpeg) after {s['warmup']} warm-up; medians."),
        "",
        "| | wall (s) | CPU (s) | x real time |",
        "| --- | ---: | ---: | ---: |",
        f"| `legato package` | {m['legato_wall_s']:.2f} | {m['legato_cpu_s']:.2f} | {m['legato_realtime_x']:.1f} |",
        (f"| plain ffmpeg (same encoders, asplit) | {m['ffmpeg_wall_s']:.2f} | {m['ffmpeg_cpu_s']:.2f} | "
        f"{m['ffmpeg_realtime_x']:.1f} |"),
        (f"| **ratio legato / ffmpeg** | **{m['ratio_wall']:.3f}** (paired rounds: {m['ratio_wall_paired']:.3f}) "
        f"| {m['ratio_cpu']:.3f} | |"),
        "",
        f"Target: wall ratio <= {r['target_ratio']} -- {'met' if r['within_target'] else 'NOT met'}.",
        "",
        "| round | legato wall / CPU (s) | ffmpeg wall / CPU (s) | wall ratio | CPU ratio |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for x in r["runs"]:
        lines.append(f"| {x['round']} | {x['legato_wall_s']:.2f} / {x['legato_cpu_s']:.2f} | "
                     f"{x['ffmpeg_wall_s']:.2f} / {x['ffmpeg_cpu_s']:.2f} | {x['ratio_wall']:.3f} | {x['ratio_cpu']:.3f} |")
    lines += [
        "",
        ("With --jobs 1 each side keeps one core busy, so CPU/wall well below 1.0 in a round means the machine "
        "was busy with other work and that round's wall time is inflated; the CPU ratio is the steadier number."),
        "",
    ]
    b = r.get("breakdown")
    if b:
        ref = b["reference_ffmpeg_runs"]
        total = b["legato_package_one_in_process"]
        lines += [
            f"## Where Legato's time goes ({b['track']}, in process, no CLI)",
            "",
            "| part | wall (s) | Python CPU (s) | ffmpeg CPU (s) |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, v in b["legato_parts"].items():
            lines.append(f"| {name} | {v['wall_s']:.3f} | {v.get('python_cpu_s', 0):.3f} | {v.get('ffmpeg_cpu_s', 0):.3f} |")
        lines += [
            f"| **total** | **{total['wall_s']:.3f}** | {total['python_cpu_s']:.3f} | {total['ffmpeg_cpu_s']:.3f} |",
            "",
            "Reference ffmpeg runs on the same track: "
            + "; ".join(f"{k.replace('_', ' ')} {v['wall_s']:.2f} s wall / {v['ffmpeg_cpu_s']:.2f} s CPU"
                        for k, v in ref.items())
            + f". xxh3 of all {b['xxh3_of_all_segments']['bytes'] / 1e6:.1f} MB of segments: "
            f"{b['xxh3_of_all_segments']['wall_s']:.3f} s.",
            "",
        ]
    lines += [
        (f"Machine: {mach['nproc']} CPUs ({mach['cpu_model']}), ffmpeg {mach['ffmpeg']}, Python {mach['python']}, "
        f"{mach['platform']}; load average {mach['loadavg_before'][0]:.2f} before, {mach['loadavg_after'][0]:.2f} "
        f"after (shared machine); Legato {mach['legato_commit']}; {r['date']}."),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
