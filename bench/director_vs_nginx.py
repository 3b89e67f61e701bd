"""Director redirects per second against nginx answering a static 302, in the same run.

What a capacity planner needs to know about the entry point: how many
manifest redirects one director worker (one core) answers per second, at what
tail latency and CPU cost, relative to the cheapest possible redirect on the
same machine at the same moment.

* **nginx** (Debian ``nginx-light``), one process (``master_process off``),
  ``access_log off``: ``location / { return 302 http://EDGE$request_uri; }``
  with the same ``Cache-Control: private, no-store`` and CORS header the
  director sends.  No session, no hashing, no token: the floor.
* **legato director**, the real command (``legato director``, one worker,
  uvloop, access log off) in front of three edges: nginx server blocks that
  answer the director's ``/healthz`` probes (every 0.5 s), so health checks
  run during the measurement as in production.  Three variants:

  - ``address``: no token; the session is the client address (from
    ``X-Forwarded-For`` of a trusted proxy), then region, Maglev lookup and
    bounded loads;
  - ``token-new``: ``?token=`` with a valid Ed25519 session token the
    director has not seen before, so its signature is checked (the first
    manifest request of a listen: the usual case at a director).  The
    requests cycle through twice as many tokens as drm.tokens.Verifier
    remembers, so its LRU never hits;
  - ``token-seen``: tokens it verified before (a player asking again), so
    only time, track and address are checked.

Requests cycle through ``--sessions`` different sessions (a wrk Lua script:
one X-Forwarded-For address, or one token, per session), so the director
places many sessions rather than one hot key.  nginx is sent the token
requests (the longer ones) and ignores them.

Each is loaded by ``wrk`` on 127.0.0.1 (keep-alive, one thread: the other
core runs the server), after a warm-up, alternating nginx / address / token /
nginx / ... so drift in the machine's load hits all alike.  Measured per run:
requests/s and p99 (``wrk --latency``), server CPU per request (utime + stime
from ``/proc``), and the CPU everything else on the machine used meanwhile
(a noisy neighbour shows there).  Medians over the rounds; ratios are
director / nginx.  Before measuring, one request to each checks that both
answer 302 with a Location on an edge, path and query kept.

    python bench/director_vs_nginx.py                    # 3 rounds of 5 s at 64 connections (about 1 min)
    python bench/director_vs_nginx.py --rounds 1 --duration 3 --out /tmp/d    # quick look

Results: OUT/director_vs_nginx.json (every number) and OUT/director_vs_nginx.md.
nginx and wrk are installed with apt-get when missing (``--no-install`` to refuse).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: `python bench/director_vs_nginx.py`
    sys.path.insert(0, str(REPO))

from bench.serve_vs_nginx import (
    cpu_seconds,
    ensure_tools,
    free_port,
    machine_busy_seconds,
    machine_facts,
    median,
    nginx_binary,
    parse_wrk,
    stop,
    wait_listening,
)
from drm.tokens import Verifier

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
TRACK = "bench-track"
PATH = f"/tracks/{TRACK}/master.m3u8"
EDGES = 3
SERVERS = ("nginx", "director-address", "director-token-new", "director-token-seen")
LABELS = {
    "director-address": "director, no token (session = address)",
    "director-token-new": "director, token never seen (Ed25519 check)",
    "director-token-seen": "director, token seen before (memoised)",
}
SCRIPT = """\
local targets = {{
{targets}
}}
local i = 0
request = function()
    i = i % #targets + 1
    local t = targets[i]
    return wrk.format("GET", t[1], t[2] and {{["X-Forwarded-For"] = t[2]}} or nil)
end
"""

NGINX_CONF = """\
worker_processes 1;
master_process off;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            add_header Cache-Control "private, no-store" always;
            add_header Access-Control-Allow-Origin "*" always;
            return 302 http://127.0.0.1:{edge}$request_uri;
        }}
    }}
{edges}
}}
"""
EDGE_BLOCK = """\
    server {{
        listen 127.0.0.1:{port};
        location = /healthz {{ return 200 "ok\\n"; }}
    }}
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=64, metavar="N", help="wrk connections (default: 64)")
    p.add_argument("--duration", type=float, default=5.0, metavar="S", help="seconds per measured run (default: 5)")
    p.add_argument("--warmup", type=float, default=1.0, metavar="S",
                   help="seconds of unmeasured load before each measured run (default: 1)")
    p.add_argument("--rounds", type=int, default=3, metavar="R",
                   help="measured runs per server, alternating (default: 3)")
    p.add_argument("--sessions", type=int, default=1000, metavar="N",
                   help="different sessions (addresses or tokens) the requests cycle through (default: 1000)")
    p.add_argument("--wrk-threads", type=int, default=1, metavar="T", help="wrk threads (default: 1)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                   help=f"where director_vs_nginx.json and .md go (default: {DEFAULT_OUT})")
    p.add_argument("--no-install", action="store_true", help="fail instead of apt-get installing nginx-light / wrk")
    return p


# --------------------------------------------------------------------------- the servers


@contextlib.contextmanager
def run_nginx(workdir: Path) -> Iterator[tuple[int, int, list[int]]]:
    """nginx: the static 302 on one port, and the stand-in edges' /healthz; yields (port, pid, edge ports)."""
    port, edges = free_port(), [free_port() for _ in range(EDGES)]
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, port=port, edge=edges[0],
                                      edges="".join(EDGE_BLOCK.format(port=p) for p in edges)))
    with open(workdir / "nginx-stderr.log", "ab") as log:
        proc = subprocess.Popen([nginx_binary(), "-p", str(workdir), "-c", str(conf)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_listening(port, proc)
        for p in edges:
            wait_listening(p, proc)
        yield port, proc.pid, edges
    finally:
        stop(proc)


@contextlib.contextmanager
def run_director(workdir: Path, edges: list[int], public_pem: Path) -> Iterator[tuple[int, int]]:
    """``legato director`` over the stand-in edges, one worker; yields (port, pid)."""
    config = workdir / "director.toml"
    config.write_text(f'[health]\ninterval = 0.5\n\n[tokens]\npublic_keys = {{ k1 = "{public_pem}" }}\n\n'
                      '[geo]\ntrusted_proxies = ["127.0.0.1/32"]\n')
    port = free_port()
    args = [sys.executable, "-m", "legato.cli", "director", "--config", str(config), "--listen",
            f"127.0.0.1:{port}", "--workers", "1", "--no-access-log"]
    for i, p in enumerate(edges):
        args += ["--edge", f"edge-{i}=http://127.0.0.1:{p}"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(workdir / "director-stderr.log", "ab") as log:
        proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_listening(port, proc)
        yield port, proc.pid
    finally:
        stop(proc)


def make_tokens(workdir: Path, count: int) -> tuple[list[str], Path]:  # ~0.1 ms each
    """``count`` valid session tokens for TRACK (an hour, one session each) and the public key PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from drm.tokens import issue

    key = Ed25519PrivateKey.generate()
    pem = workdir / "k1.pub.pem"
    pem.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    now = time.time()
    tokens = [issue(key, "k1", user="bench", session=f"{n:032x}", tracks=(TRACK,), now=now, ttl=3600)
              for n in range(count)]
    return tokens, pem


def write_script(path: Path, targets: list[tuple[str, str | None]]) -> Path:
    """A wrk Lua script cycling through (path, X-Forwarded-For or None)."""
    rows = ",\n".join("{" + json.dumps(p) + (", " + json.dumps(xff) if xff else "") + "}" for p, xff in targets)
    path.write_text(SCRIPT.format(targets=rows))
    return path


def run_wrk(url: str, script: Path, connections: int, seconds: float, threads: int) -> tuple[str, float]:
    """wrk with a request script; its report and its own CPU seconds."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script),
           url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    output = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"wrk failed:\n{output}")
    return output, usage.ru_utime + usage.ru_stime


def check_redirect(port: int, target: str, edge_ports: list[int], xff: str | None = None) -> str:
    """One GET: a 302 to one of the edges with the path and query kept; returns the Location."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", target, headers={"X-Forwarded-For": xff} if xff else {})
        resp = conn.getresponse()
        resp.read()
        location = resp.getheader("Location") or ""
    finally:
        conn.close()
    if resp.status != 302 or not any(location == f"http://127.0.0.1:{p}{target}" for p in edge_ports):
        raise RuntimeError(f"port {port}{target[:60]}: {resp.status}, Location {location[:80]!r}")
    return location


# --------------------------------------------------------------------------- load and report


@dataclass
class Run:
    server: str
    round: int
    requests: int
    seconds: float
    rps: float
    latency_ms: dict[str, float]
    errors: dict[str, int]
    server_cpu_s: float
    cpu_us_per_request: float
    wrk_cpu_s: float
    other_cpu_s: float


def measure(server: str, port: int, pid: int, script: Path, rnd: int, args: argparse.Namespace) -> Run:
    url = f"http://127.0.0.1:{port}/"
    if args.warmup > 0:
        run_wrk(url, script, args.connections, args.warmup, args.wrk_threads)
    cpu0, busy0 = cpu_seconds(pid), machine_busy_seconds()
    output, wrk_cpu = run_wrk(url, script, args.connections, args.duration, args.wrk_threads)
    cpu, busy = cpu_seconds(pid) - cpu0, machine_busy_seconds() - busy0
    parsed = parse_wrk(output)
    requests = parsed["requests"]
    return Run(server, rnd, requests, parsed["seconds"], parsed["rps"], parsed["latency_ms"], parsed["errors"],
               round(cpu, 3), round(cpu / requests * 1e6, 2) if requests else float("nan"), round(wrk_cpu, 3),
               round(max(0.0, busy - cpu - wrk_cpu), 3))


def summarise(runs: list[Run]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for server in SERVERS:
        mine = [r for r in runs if r.server == server]
        out[server] = {"rps": round(median([r.rps for r in mine]), 1),
                       "p99_ms": round(median([r.latency_ms.get("p99", float("nan")) for r in mine]), 3),
                       "cpu_us": round(median([r.cpu_us_per_request for r in mine]), 2)}
    base = out["nginx"]
    for server in SERVERS[1:]:
        row = out[server]
        row["rps_ratio"] = round(row["rps"] / base["rps"], 3)
        row["p99_ratio"] = round(row["p99_ms"] / base["p99_ms"], 3)
        row["cpu_ratio"] = round(row["cpu_us"] / base["cpu_us"], 3)
    return out


def write_report(out: Path, facts: dict[str, Any], args: argparse.Namespace, runs: list[Run],
                 summary: dict[str, dict[str, float]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    settings = {"connections": args.connections, "duration_s": args.duration, "warmup_s": args.warmup,
                "rounds": args.rounds, "wrk_threads": args.wrk_threads, "edges": EDGES, "sessions": args.sessions}
    (out / "director_vs_nginx.json").write_text(json.dumps(
        {"machine": facts, "settings": settings, "summary": summary, "runs": [asdict(r) for r in runs]},
        indent=2) + "\n")
    n = summary["nginx"]
    lines = [
        "# Director redirects vs nginx's static 302",
        "",
        ("Generated by `bench/director_vs_nginx.py` (its docstring gives the method). One server process each "
        f"(director: one worker on uvloop), wrk with {args.wrk_threads} thread(s) and {args.connections} keep-alive "
        f"connections on 127.0.0.1, requests cycling through {args.sessions} sessions; medians of "
        f"{args.rounds} alternating runs of {args.duration:g} s (after {args.warmup:g} s warm-up). "
        "Ratios are director / nginx."),
        "",
        "| server | requests/s | rps ratio | p99 ms | p99 ratio | CPU µs/req | CPU ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| nginx `return 302` | {n['rps']:.0f} | 1 | {n['p99_ms']:.2f} | 1 | {n['cpu_us']:.1f} | 1 |",
    ]
    for server, label in LABELS.items():
        r = summary[server]
        lines.append(f"| {label} | {r['rps']:.0f} | **{r['rps_ratio']:.2f}** | {r['p99_ms']:.2f} | "
                     f"**{r['p99_ratio']:.2f}** | {r['cpu_us']:.1f} | **{r['cpu_ratio']:.2f}** |")
    other = [r.other_cpu_s / r.seconds for r in runs if r.seconds]
    errors = sum(sum(r.errors.values()) for r in runs)
    lines += [
        "",
        "Every run, in order (requests/s, p99 ms, server CPU µs per request):",
        "",
        *[f"- round {r.round} {r.server}: {r.rps:.0f}, {r.latency_ms.get('p99', float('nan')):.2f}, "
          f"{r.cpu_us_per_request:.1f}" for r in runs],
        "",
        (f"Machine: {facts['nproc']} CPUs ({facts['cpu_model']}), Linux {facts['kernel']}; Python {facts['python']}, "
         f"aiohttp {facts['aiohttp']}, uvloop {facts['uvloop']}, nginx {facts['nginx']}, {facts['wrk']}; "
         f"{facts['date']}."),
        "",
        (f"Other load on the machine during the measured runs (CPU-seconds per second, besides server and wrk): "
         f"median {median(other):.2f}, max {max(other, default=0):.2f}. wrk socket errors and non-2xx/3xx "
         f"responses over all runs: {errors}."),
        "",
    ]
    (out / "director_vs_nginx.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1 or args.sessions < 1:
        sys.exit(f"director_vs_nginx: bad settings: rounds {args.rounds}, duration {args.duration}, "
                 f"connections {args.connections}")
    ensure_tools(install=not args.no_install)
    facts = machine_facts()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="legato-director-bench-") as tmp:
        work = Path(tmp)
        fresh = 2 * Verifier({}).max_entries  # more than the memo holds: cycling through them, it never hits
        tokens, pem = make_tokens(work, fresh)
        new: list[tuple[str, str | None]] = [(f"{PATH}?token={t}", None) for t in tokens]
        seen = new[:args.sessions]
        by_address: list[tuple[str, str | None]] = [(PATH, f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
                                                    for n in range(1, args.sessions + 1)]
        targets = {"nginx": seen, "director-address": by_address, "director-token-new": new,
                   "director-token-seen": seen}
        scripts = {name: write_script(work / f"{name}.lua", t) for name, t in targets.items()}
        with run_nginx(work) as (nginx_port, nginx_pid, edge_ports), \
                run_director(work, edge_ports, pem) as (director_port, director_pid):
            servers = {name: (director_port, director_pid) for name in SERVERS}
            servers["nginx"] = (nginx_port, nginx_pid)
            for name, target in targets.items():
                for path, xff in target[:3]:
                    check_redirect(servers[name][0], path, edge_ports, xff)
            for rnd in range(args.rounds):
                for name in SERVERS:
                    port, pid = servers[name]
                    runs.append(measure(name, port, pid, scripts[name], rnd, args))
                    r = runs[-1]
                    print(f"  round {rnd} {name:20s} {r.rps:9.0f} req/s  p99 {r.latency_ms.get('p99', 0):7.2f} ms  "
                          f"{r.cpu_us_per_request:6.1f} µs CPU/req  (others {r.other_cpu_s / r.seconds:.2f} CPU)",
                          flush=True)
    summary = summarise(runs)
    write_report(args.out, facts, args, runs, summary)
    for name in SERVERS[1:]:
        s = summary[name]
        print(f"{name}: {s['rps']:.0f} req/s = {s['rps_ratio']:.2f}x nginx ({summary['nginx']['rps']:.0f}), "
              f"p99 {s['p99_ratio']:.2f}x, CPU/req {s['cpu_ratio']:.2f}x")
    print(f"results: {args.out / 'director_vs_nginx.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
