"""Reports of the bench commands: ``report.md``, ``results.json`` and PNG plots in one directory.

Every number in a report is in its ``results.json``; the Markdown embeds the
plots.  Files are written under temporary names and renamed into place, so
an interrupted run leaves the previous report whole.  Plots use matplotlib's
Agg backend (no display needed).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["machine", "plan_markdown", "plot_plan", "plot_simulate", "simulate_markdown", "write_report"]

Figure = Any


def machine() -> dict[str, Any]:
    """Where a result was measured (numbers from another machine are not comparable)."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "python": platform.python_version(),
            "platform": platform.platform()}


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(out: Path, markdown: str, results: dict[str, Any],
                 plots: dict[str, Callable[[], Figure]]) -> list[Path]:
    """Write ``report.md``, ``results.json`` and each plot (``name.png``) into ``out``; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in plots.items():
        fig = draw()
        path = out / f"{name}.png"
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".png", dir=out)
        os.close(fd)
        try:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
            os.replace(tmp, path)
        finally:
            plt.close(fig)
            Path(tmp).unlink(missing_ok=True)
        written.append(path)
    _write_atomic(out / "results.json", (json.dumps(results, indent=2, sort_keys=False) + "\n").encode())
    _write_atomic(out / "report.md", markdown.encode())
    return [out / "report.md", out / "results.json", *written]


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _bytes(n: float) -> str:
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def command_line(argv: list[str] | None = None) -> str:
    return "legato " + " ".join(sys.argv[1:] if argv is None else argv)


# --------------------------------------------------------------------------
# simulate


def simulate_markdown(r: dict[str, Any]) -> str:
    """The simulate report (``r`` is its results.json)."""
    t = r["trace"]
    s = r["settings"]
    bench = r["bench"]
    lines = [
        "# Cache simulation",
        "",
        f"`{r['command']}`",
        "",
        "## Trace",
        "",
        (f"- source: `{t['source']}`; {t['requests']:,} requests of {t['objects']:,} objects by "
        f"{t['clients']:,} clients over {t['duration_s'] / 3600:.2f} h of virtual time"),
        (f"- working set (distinct objects): {_bytes(t['working_set_bytes'])}; requested: "
        f"{_bytes(t['requested_bytes'])}"),
    ]
    if t.get("catalogue_bytes"):
        lines.append(f"- catalogue of the model (every rendition of every track at the start): "
                     f"{_bytes(t['catalogue_bytes'])}")
    if t["malformed_lines"] or t["skipped_lines"]:
        lines.append(f"- lines: {t['lines']:,}; skipped (not a cached object): {t['skipped_lines']:,}; "
                     f"malformed: {t['malformed_lines']:,}")
        lines += [f"  - {e}" for e in t["malformed_examples"]]
    if t.get("model"):
        m = t["model"].get("model", t["model"])
        w = m.get("workload", {})
        lines.append(f"- model: {w.get('tracks')} tracks, Zipf {w.get('zipf_s')}, {w.get('listens')} listens at "
                     f"{w.get('listen_rate')}/s, skip probability {w.get('skip_probability')}, churn "
                     f"{m.get('churn')}/h, surge at {m.get('surge_at')} s for {m.get('surge_seconds')} s "
                     f"(share {m.get('surge_share')}), diurnal amplitude {m.get('diurnal')}, "
                     f"seed {t['model'].get('seed')}")
    lines += [
        "",
        "## Topology",
        "",
        f"- {s['edges']} edge(s), {s['regionals']} regional(s)"
        + (f" of {_bytes(s['regional_size'])} each ({s['regional_policy'] or 'same policy as the edge'})"
           if s["regionals"] else "")
        + f", origin; edge prefetch: {s['prefetch'] or 'off'}",
        "- edge sizes: " + ", ".join(f"{z['label']} = {_bytes(z['bytes'])}" for z in bench["sizes"])
        + " (percentages are of the whole trace's working set)",
        "- routing: clients to edges and objects to regionals by `cache.ring.Ring` (client name; track id)",
        "",
        "## Per tier",
        "",
        ("Hit ratios are of requests (object) and of bytes; egress is what each tier sends downstream over the "
         "whole trace. With prefetch, a prefetched segment that a player then asks for is an edge hit: the edge "
         "hit ratios measure how often a player is served without waiting on upstream; the bytes regionals "
         "send to edges measure the traffic."),
        "",
        ("| edge size | policy | edge hit | edge byte hit | regional hit | regional byte hit | edges to players "
         "| regionals to edges | origin out | origin Gbps (mean) | prefetched (used) |"),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    labels = {z["bytes"]: z["label"] for z in bench["sizes"]}
    for row in bench["topology"]:
        tp, e, g = row["topology"], row["edge"], row["regional"]
        pf = row["prefetch"]
        lines.append(
            f"| {labels.get(tp['edge_size'], tp['edge_size'])} | {tp['edge_policy']} | {_pct(e['hit_ratio'])} | "
            f"{_pct(e['byte_hit_ratio'])} | {_pct(g['hit_ratio']) if g else '-'} | "
            f"{_pct(g['byte_hit_ratio']) if g else '-'} | {_bytes(row['egress_bytes']['edge'])} | "
            f"{_bytes(row['egress_bytes']['regional']) if g else '-'} | {_bytes(row['egress_bytes']['origin'])} | "
            f"{row['egress_gbps']['origin']:.4g} | "
            + (f"{pf['fetched']:,} ({pf['used']:,})" if tp["prefetch"] else "-") + " |")
    alone = bench["edge_alone"]
    lines += [
        "",
        "![edge hit ratio and origin egress over time](over_time.png)",
        "",
        "## The edge alone: our policies beside libCacheSim",
        "",
        f"The requests of `{alone['edge']}` ({alone['requests']:,} requests, working set "
        f"{_bytes(alone['working_set_bytes'])}) through one cache of each size, no prefetch: our policies "
        f"with `cache.sim.simulate` (the classes the nodes run), libCacheSim "
        f"{r.get('libcachesim') or '(not installed)'} on the same requests."
        + (f" libCacheSim sizes in units of {alone['libcachesim_unit']} B." if alone["libcachesim_unit"] > 1 else ""),
        "",
    ]
    names = list(dict.fromkeys([o["policy"] for o in alone["ours"]] + [p["policy"] for p in alone["libcachesim"]]))
    lines.append("| policy | " + " | ".join(f"{z['label']} hit / byte hit" for z in bench["sizes"]) + " |")
    lines.append("| --- | " + " | ".join("---:" for _ in bench["sizes"]) + " |")
    cells: dict[tuple[str, int], dict[str, Any]] = {(o["policy"], o["capacity"]): o for o in alone["ours"]}
    cells.update({(p["policy"], p["capacity"]): p for p in alone["libcachesim"]})
    for name in names:
        src = "ours" if any(o["policy"] == name for o in alone["ours"]) else "libCacheSim"
        offline = any(p["policy"] == name and p.get("offline") for p in alone["libcachesim"])
        label = f"{name} ({src}{', offline' if offline else ''})"
        row = []
        for z in bench["sizes"]:
            c = cells.get((name, z["bytes"]))
            row.append(f"{_pct(c['hit_ratio'])} / {_pct(c['byte_hit_ratio'])}" if c else "-")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    lines += ["", "![hit ratio vs cache size](hit_ratio_vs_size.png)", ""]
    if alone["libcachesim_output"]:
        lines += ["libCacheSim printed (kept out of our output):", ""]
        lines += [f"    {line}" for line in alone["libcachesim_output"]]
        lines.append("")
    lines += ["## Findings", ""]
    lines += [f"- {f}" for f in r["findings"]] or ["- none"]
    sp = bench["speed"]
    lines += [
        "",
        "## Speed",
        "",
        ("Requests replayed per CPU-minute (one core; median over sizes). Target: "
        f"{sp['target_requests_per_cpu_minute']:,}."),
        "",
        "| policy | edge alone (cache.sim) | whole topology |",
        "| --- | ---: | ---: |",
    ]
    for name in r["bench"]["policies"]:
        a = sp["edge_alone_requests_per_cpu_minute"].get(name)
        b = sp["topology_requests_per_cpu_minute"].get(name)
        lines.append(f"| {name} | {f'{a:,}' if a else '-'} | {f'{b:,}' if b else 'not run'} |")
    lines += ["", (f"Machine: {r['machine']['cpus']} CPUs ({r['machine']['cpu_model']}), Python "
              f"{r['machine']['python']}. Wall time of the run: {r['wall_seconds']:.0f} s."), ""]
    return "\n".join(lines)


def findings(r: dict[str, Any], tolerance: float = 0.005) -> list[str]:
    """Where a policy of ours loses to libCacheSim (by more than ``tolerance``), said plainly."""
    from bench.libcachesim_peer import COUNTERPART, OFFLINE

    alone = r["bench"]["edge_alone"]
    labels = {z["bytes"]: z["label"] for z in r["bench"]["sizes"]}
    peers = {(p["policy"], p["capacity"]): p for p in alone["libcachesim"]}
    out = []
    if not peers:
        return ["libCacheSim was not run: no comparison."]
    for o in alone["ours"]:
        size, label = o["capacity"], labels.get(o["capacity"], o["capacity"])
        twin = peers.get((COUNTERPART.get(o["policy"], ""), size))
        if twin and o["hit_ratio"] < twin["hit_ratio"] - tolerance:
            out.append(f"at {label}, our {o['policy']} ({_pct(o['hit_ratio'], 2)}) loses to libCacheSim's "
                       f"{twin['policy']} ({_pct(twin['hit_ratio'], 2)})")
        if o["policy"] == "listen":
            online = [p for (name, cap), p in peers.items() if cap == size and name not in OFFLINE]
            for metric in ("hit_ratio", "byte_hit_ratio"):
                best = max(online, key=lambda p, m=metric: float(p[m]), default=None)  # type: ignore[misc]
                if best is None:
                    continue
                what = "object" if metric == "hit_ratio" else "byte"
                if o[metric] < best[metric] - tolerance:
                    out.append(f"at {label}, our listen's {what} hit ratio ({_pct(o[metric], 2)}) loses to "
                               f"libCacheSim's {best['policy']} ({_pct(best[metric], 2)})")
                elif o[metric] < best[metric]:
                    out.append(f"at {label}, our listen's {what} hit ratio ({_pct(o[metric], 2)}) is within 0.5 "
                               f"points of, but below, libCacheSim's best online policy ({best['policy']}, "
                               f"{_pct(best[metric], 2)})")
                else:
                    out.append(f"at {label}, our listen's {what} hit ratio ({_pct(o[metric], 2)}) is at least "
                               f"that of every online libCacheSim policy (best: {best['policy']}, "
                               f"{_pct(best[metric], 2)})")
    for o in alone["ours"]:
        twin = peers.get((COUNTERPART.get(o["policy"], ""), o["capacity"]))
        if twin and abs(o["hit_ratio"] - twin["hit_ratio"]) <= tolerance:
            out.append(f"at {labels.get(o['capacity'])}, our {o['policy']} is within 0.5 points of libCacheSim's "
                       f"{twin['policy']} ({_pct(o['hit_ratio'], 2)} vs {_pct(twin['hit_ratio'], 2)})")
        elif twin and o["hit_ratio"] > twin["hit_ratio"] + tolerance:
            out.append(f"at {labels.get(o['capacity'])}, our {o['policy']} beats libCacheSim's {twin['policy']} "
                       f"({_pct(o['hit_ratio'], 2)} vs {_pct(twin['hit_ratio'], 2)}; see the parameters in "
                       "bench/libcachesim_peer.py)")
    out += _topology_findings(r, labels, tolerance)
    slow = [name for name, v in r["bench"]["speed"]["topology_requests_per_cpu_minute"].items()
            if v < r["bench"]["speed"]["target_requests_per_cpu_minute"]]
    if slow:
        out.append(f"below 1M requests per CPU-minute through the topology: {', '.join(slow)}")
    return out


def _topology_findings(r: dict[str, Any], labels: dict[int, str], tolerance: float) -> list[str]:
    """In the topology: each policy against the others at the same size, on traffic and on players' waits."""
    rows = [t for t in r["bench"]["topology"]
            if t["topology"]["edges"] > 1 or t["topology"]["regionals"] or t["topology"]["prefetch"]]
    out = []
    for size in dict.fromkeys(t["topology"]["edge_size"] for t in rows):
        group = [t for t in rows if t["topology"]["edge_size"] == size]
        if len(group) < 2:
            continue
        label = labels.get(size, size)
        for key, what in (("regional", "bytes edges fetch from regionals"), ("origin", "bytes fetched from origin")):
            if key == "regional" and not group[0]["topology"]["regionals"]:
                continue
            ranked = sorted(group, key=lambda t, k=key: t["egress_bytes"][k])  # type: ignore[misc]
            best, worst = ranked[0], ranked[-1]
            out.append(f"in the topology at {label}: fewest {what}: {best['topology']['edge_policy']} "
                       f"({_bytes(best['egress_bytes'][key])}); most: {worst['topology']['edge_policy']} "
                       f"({_bytes(worst['egress_bytes'][key])}, "
                       f"{_pct(worst['egress_bytes'][key] / max(1, best['egress_bytes'][key]) - 1)} more)")
        ranked = sorted(group, key=lambda t: -t["edge"]["byte_hit_ratio"])
        best = ranked[0]
        for t in ranked[1:]:
            if t["edge"]["byte_hit_ratio"] < best["edge"]["byte_hit_ratio"] - tolerance:
                out.append(f"in the topology at {label}: {t['topology']['edge_policy']} serves fewer bytes from the "
                           f"edge at request time than {best['topology']['edge_policy']} "
                           f"({_pct(t['edge']['byte_hit_ratio'])} vs {_pct(best['edge']['byte_hit_ratio'])} byte hit "
                           f"ratio, prefetch {t['topology']['prefetch'] or 'off'}): more player requests wait "
                           "on a regional")
    return out


def plot_simulate(r: dict[str, Any]) -> dict[str, Callable[[], Figure]]:
    """The simulate plots: hit ratio vs cache size per policy; edge hit ratio and origin egress over time."""
    def sizes() -> Figure:
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullFormatter

        alone = r["bench"]["edge_alone"]
        ws = max(1, alone["working_set_bytes"])
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
        groups: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        for o in alone["ours"]:
            groups.setdefault(("ours", o["policy"]), []).append((o["capacity"] / ws, o["hit_ratio"], o["byte_hit_ratio"]))
        for p in alone["libcachesim"]:
            src = "offline" if p.get("offline") else "libCacheSim"
            groups.setdefault((src, p["policy"]), []).append((p["capacity"] / ws, p["hit_ratio"], p["byte_hit_ratio"]))
        style = {"ours": "-", "libCacheSim": "--", "offline": ":"}
        for ax, index, title in ((axes[0], 1, "object hit ratio"), (axes[1], 2, "byte hit ratio")):
            for (src, name), pts in groups.items():
                pts.sort()
                ax.plot([100 * p[0] for p in pts], [p[index] for p in pts], style[src], marker="o", markersize=3,
                        label=f"{name} ({src})", linewidth=2.2 if src == "ours" else 1.2)
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(f"cache size, % of {alone['edge']}'s working set")
            ax.set_ylabel(title)
            ax.set_title(f"{title} vs cache size (edge alone, no prefetch)")
            ax.grid(True, which="both", alpha=0.3)
        axes[1].legend(fontsize=7, loc="lower right", ncol=2)
        return fig

    def over_time() -> Figure:
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
        for row in r["bench"]["topology"]:
            series = row["series"]
            if not series:
                continue
            tp = row["topology"]
            if tp["edge_size"] != r["bench"]["sizes"][0]["bytes"]:
                continue
            step = (series[1]["start"] - series[0]["start"]) if len(series) > 1 else 1.0
            hours = [s["start"] / 3600 for s in series]
            ax1.plot(hours, [s["hits"] / s["requests"] if s["requests"] else None for s in series],
                     label=tp["edge_policy"])
            ax2.plot(hours, [s["origin_bytes"] * 8 / step / 1e9 for s in series], label=tp["edge_policy"])
        model = (r["trace"].get("model") or {}).get("model") or {}
        if model.get("surge_at") is not None:
            for ax in (ax1, ax2):
                ax.axvspan(model["surge_at"] / 3600, (model["surge_at"] + model["surge_seconds"]) / 3600,
                           color="orange", alpha=0.15, label="viral surge")
        ax1.set_ylabel("edge hit ratio")
        ax2.set_ylabel("origin egress, Gbit/s")
        ax2.set_xlabel("hours of virtual time")
        ax1.set_title(f"over time, edge size {r['bench']['sizes'][0]['label']}")
        ax1.legend(fontsize=8)
        for ax in (ax1, ax2):
            ax.grid(True, alpha=0.3)
        return fig

    return {"hit_ratio_vs_size": sizes, "over_time": over_time}


# --------------------------------------------------------------------------
# plan


def plan_markdown(r: dict[str, Any]) -> str:
    i, o = r["inputs"], r["outputs"]
    lines = [
        "# Capacity plan",
        "",
        f"`{r['command']}`",
        "",
        "## Inputs",
        "",
        (f"- {i['users']:,} users, {i['streams']:,} concurrent streams at peak, mean bit rate "
        f"{i['mean_kbps']:.1f} kbit/s"),
        f"- catalogue: {i['tracks']:,} tracks of {i['track_seconds']:.0f} s on average, renditions "
        + ", ".join(f"{k} {v:g} kbit/s" for k, v in i["ladder_kbps"].items()) + f"; popularity Zipf {i['zipf_s']}",
        "- regions: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in i["regions"].items()),
        (f"- per-edge throughput: {i['edge_gbps']:.1f} Gbit/s ({i['edge_gbps_source']}), run at most "
        f"{100 * i['utilisation']:.0f}% busy, {i['spare_edges']} spare edge(s) per region"),
        f"- hit ratios: {i['hit_source']}",
        "",
        "## Totals",
        "",
        f"- peak demand: **{o['demand_gbps'] / 1000:,.2f} Tbit/s** ({o['demand_gbps']:,.0f} Gbit/s)",
        (f"- edges: **{o['edges_total']:,}** with **{_bytes(o['ssd_per_edge_bytes'])} SSD each** "
        f"({100 * o['edge_cache_fraction']:.3g}% of the catalogue's bytes)"),
        (f"- expected hit ratio: edge {_pct(o['edge_hit_ratio'])} of requests / {_pct(o['edge_byte_hit_ratio'])} "
        f"of bytes; regional {_pct(o['regional_byte_hit_ratio'])} of the bytes edges miss; "
        f"overall {_pct(o['overall_byte_hit_ratio'])} of bytes served without origin"),
        (f"- egress at peak: edge {o['egress_gbps']['edge']:,.0f} Gbit/s, regional "
        f"{o['egress_gbps']['regional']:,.0f} Gbit/s, origin {o['egress_gbps']['origin']:,.0f} Gbit/s"),
        (f"- origin storage: **{_bytes(o['origin_storage_bytes'])}** "
        f"({_bytes(o['origin_storage_bytes'] / max(1, i['tracks']))} per track, every rendition)"),
        (f"- how warm the caches are: production {o['listens_per_track_per_edge_per_day']:.2f} listens per track "
         f"per edge per day; the simulated trace had "
         + (f"{o['simulated_listens_per_track_per_edge']:.2f}" if o.get("simulated_listens_per_track_per_edge")
            else "(unknown)")
         + " per edge over its length: where the trace is warmer, the transferred hit ratios are optimistic"),
        "",
        "## Per region",
        "",
        "| region | share | demand Gbps | edges | edge SSD total | regional egress Gbps | origin egress Gbps |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for g in o["regions"]:
        lines.append(f"| {g['region']} | {100 * g['share']:.0f}% | {g['demand_gbps']:,.0f} | {g['edges']:,} | "
                     f"{_bytes(g['ssd_bytes'])} | {g['regional_egress_gbps']:,.0f} | {g['origin_egress_gbps']:,.0f} |")
    lines += ["", "![egress per tier and region](egress.png)", "", "## Model", "", r["model"], ""]
    return "\n".join(lines)


def plot_plan(r: dict[str, Any]) -> dict[str, Callable[[], Figure]]:
    def egress() -> Figure:
        import matplotlib.pyplot as plt

        regions = r["outputs"]["regions"]
        names = [g["region"] for g in regions]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
        width = 0.27
        xs = range(len(names))
        for k, (key, label) in enumerate((("demand_gbps", "edge (to players)"),
                                          ("regional_egress_gbps", "regional (to edges)"),
                                          ("origin_egress_gbps", "origin (to regionals)"))):
            values = [g[key] for g in regions]
            ax1.bar([x + (k - 1) * width for x in xs], values, width, label=label)
        ax1.set_xticks(list(xs), names)
        ax1.set_ylabel("Gbit/s at peak")
        ax1.set_title("egress per tier and region")
        ax1.legend(fontsize=8)
        ax1.grid(True, axis="y", which="both", alpha=0.3)
        ax2.bar(names, [g["edges"] for g in regions], color="tab:gray")
        for x, g in zip(xs, regions, strict=True):
            ax2.annotate(f"{g['edges']:,}", (x, g["edges"]), ha="center", va="bottom", fontsize=8)
        ax2.set_ylabel("edges")
        ax2.set_title(f"edges per region ({_bytes(r['outputs']['ssd_per_edge_bytes'])} SSD each)")
        return fig

    return {"egress": egress}
