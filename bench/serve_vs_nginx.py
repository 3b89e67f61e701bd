"""Cache hits from Legato's fast path against nginx serving the same files.

What a capacity planner needs to know about the hot path of a cache node:
how many segment requests per second one worker core serves, at what tail
latency, and at what CPU cost, relative to nginx doing the same job on the same
machine in the same run.

Both sides serve the same segment-sized files (120 kB and 240 kB of random
bytes, the sizes of 6-second AAC segments at 160 and 320 kbit/s) from a
temporary directory on 127.0.0.1, one process each:

* **nginx** (Debian ``nginx-light``): a generated config, one process
  (``master_process off``), ``sendfile on``, ``tcp_nopush on`` (Debian's
  default; ``--nginx-tcp-nopush off`` to compare), keep-alive
  with no request limit, ``access_log off``, and ``add_header`` for the
  fields a cache hit carries (Cache-Control, CORS, Via, Age, X-Cache), so both
  sides write heads of about the same size.
* **Legato**, in up to three variants (``--lookup``):

  - ``edge``: a real ``legato edge`` (one worker, uvloop, the default
    config: listen policy, RAM tier, prefetch, metrics) whose cache was
    filled through it from an nginx "origin" before the first round, so
    each hit takes the whole node path: the fast path's head
    parsing, ``Node.lookup`` (route, ``Store.lookup``, freshness, metrics,
    prefetch bookkeeping), ``cache.respond`` and ``os.sendfile`` (or one
    ``sendmsg`` from the RAM tier), or for the same request again within
    the second the fast path's hot reply, vouched for by ``Store.renew``;
  - ``edge-disk``: the same with the RAM tier off (``--cache-ram 0``):
    every body goes out with ``os.sendfile``;
  - ``files``: ``cache.fastpath.serve`` alone with a lookup that just
    opens the file, as nginx does with its default ``open_file_cache off``:
    the serving path without the node's bookkeeping, for reference.

Every server is started once and runs for the whole benchmark, as it would
in production, and is first put under ``--settle`` seconds of unmeasured
load (a new Python process's first seconds under load measured well above
its steady state here).  Each is then loaded with ``wrk`` (keep-alive, one
thread: the other core runs the server) at 64 and 256 connections, each run
after a short warm-up, alternating nginx / each Legato variant / nginx / ...
so drift in the machine's load hits both alike.  Measured per run:
requests/s and latency percentiles (``wrk --latency``), the server's CPU
time per request (utime + stime from ``/proc/PID/stat`` over the run,
divided by the requests wrk completed), wrk's own CPU (``wait4``) and the CPU
time everything else on the machine used meanwhile (``/proc/stat``), so a
noisy neighbour is visible in the results.  This machine's speed drifts by
tens of percent between runs seconds apart, so the ratios are *paired*: each
Legato run is divided by the nginx run of the same round, and the median of
those per-round ratios is reported with their range.  Targets (reported, not
asserted): requests/s >= 0.8x, p99 <= 1.5x, CPU per request <= 2x.

    python bench/serve_vs_nginx.py                       # 2 sizes x 2 loads x 3 rounds of 10 s, edge and files
    python bench/serve_vs_nginx.py --duration 3 --rounds 1 --connections 64   # quick look
    python bench/serve_vs_nginx.py --legato-modes sendfile,no-sendfile      # also the kill switch
    python bench/serve_vs_nginx.py --lookup files                           # the serving path alone

nginx and wrk are installed with apt-get when missing.  Results:
OUT/serve_vs_nginx.json (every number) and OUT/serve_vs_nginx.md.  Exits 0
whether or not the targets are met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
LOOKUPS = ("edge", "edge-disk", "files")
TARGETS = {"rps_ratio_min": 0.8, "p99_ratio_max": 1.5, "cpu_ratio_max": 2.0}
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
HIT_FIELDS = {  # what both servers add to every hit
    "Cache-Control": "public, max-age=31536000, immutable",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Content-Range, Content-Length, ETag, Age, Accept-Ranges, Date",
    "X-Cache": "HIT",
    "Via": "1.1 bench",
    "Age": "0",
}


def csv(kind: type, text: str) -> list[Any]:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=lambda t: csv(int, t), default=[120_000, 240_000], metavar="BYTES,...",
                   help="object sizes in bytes (default: 120000,240000)")
    p.add_argument("--connections", type=lambda t: csv(int, t), default=[64, 256], metavar="N,...",
                   help="wrk connection counts (default: 64,256)")
    p.add_argument("--duration", type=float, default=8.0, metavar="S", help="seconds per measured run (default: 8)")
    p.add_argument("--warmup", type=float, default=2.0, metavar="S",
                   help="seconds of unmeasured load before each measured run (default: 2)")
    p.add_argument("--rounds", type=int, default=5, metavar="R",
                   help="measured runs per server and configuration, alternating (default: 5)")
    p.add_argument("--settle", type=float, default=30.0, metavar="S",
                   help="seconds of unmeasured load on each server after it starts, before the first round "
                        "(default: 30)")
    p.add_argument("--legato-modes", type=lambda t: csv(str, t), default=["sendfile"], metavar="MODE,...",
                   help="sendfile and/or no-sendfile (LEGATO_NO_SENDFILE=1) (default: sendfile)")
    p.add_argument("--lookup", type=lambda t: csv(str, t), default=["edge", "files"], metavar="KIND,...",
                   help="Legato variants: a real `legato edge` with the default config (edge), the same without "
                        "its RAM tier (edge-disk), or the fast path alone straight from the files (files) "
                        "(default: edge,files)")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                   help="event loop of the files variant (default: uvloop, as legato.server; an edge always runs "
                        "legato.server's)")
    p.add_argument("--nginx-tcp-nopush", choices=("on", "off"), default="on",
                   help="nginx's tcp_nopush (default: on, as Debian's nginx.conf; Legato sends heads with MSG_MORE)")
    p.add_argument("--wrk-threads", type=int, default=1, metavar="T", help="wrk threads (default: 1)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                   help=f"where serve_vs_nginx.json and .md go (default: {DEFAULT_OUT})")
    p.add_argument("--no-install", action="store_true", help="fail instead of apt-get installing nginx-light / wrk")
    p.add_argument("--worker", nargs=2, metavar=("DIR", "PORT"), help=argparse.SUPPRESS)  # internal
    return p


# --------------------------------------------------------------------------
# Tools


def ensure_tools(install: bool) -> None:
    """nginx and wrk from Debian packages (installed with apt-get if missing)."""
    missing = [pkg for tool, pkg in (("nginx", "nginx-light"), ("wrk", "wrk")) if not shutil.which(tool)
               and not Path(f"/usr/sbin/{tool}").exists()]
    if not missing:
        return
    if not install:
        sys.exit(f"serve_vs_nginx: missing {', '.join(missing)} (apt-get install {' '.join(missing)})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env, stdout=subprocess.DEVNULL)


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process we started (by PID), SIGKILL after a timeout, reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def machine_busy_seconds() -> float:
    """CPU time spent (not idle) by the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


# --------------------------------------------------------------------------
# The two servers


NGINX_CONF = """\
worker_processes 1;
master_process off;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush {nopush};
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    types {{ audio/mp4 m4s; }}
    default_type application/octet-stream;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {www};
{headers}
        location = /healthz {{ return 200 "ok\\n"; }}
    }}
}}
"""


@contextlib.contextmanager
def run_nginx(www: Path, workdir: Path, nopush: str) -> Iterator[tuple[int, int]]:
    """nginx serving ``www``; yields (port, pid)."""
    port = free_port()
    headers = "\n".join(f'        add_header {k} "{v}";' for k, v in HIT_FIELDS.items())
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, port=port, www=www, headers=headers, nopush=nopush))
    with open(workdir / "stderr.log", "ab") as log:
        proc = subprocess.Popen([nginx_binary(), "-p", str(workdir), "-c", str(conf)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_listening(port, proc)
        yield port, proc.pid
    finally:
        stop(proc)


@contextlib.contextmanager
def run_legato(www: Path, workdir: Path, mode: str, loop: str, lookup: str,
               origin: str | None = None) -> Iterator[tuple[int, int]]:
    """A Legato process serving ``www`` (``files``) or an edge on ``workdir/edge-cache``; yields (port, pid).

    The edge variants pull misses from ``origin`` into that directory.
    """
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("LEGATO_NO_SENDFILE", None)
    if mode == "no-sendfile":
        env["LEGATO_NO_SENDFILE"] = "1"
    if loop == "asyncio":
        env["LEGATO_BENCH_LOOP"] = "asyncio"
    if lookup == "files":
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(www), str(port)]
    else:
        assert origin is not None
        cmd = [sys.executable, "-c", "import sys; from legato.cli import main; sys.exit(main())", "edge",
               "--name", "bench", "--listen", f"127.0.0.1:{port}", "--workers", "1", "--upstream", origin,
               "--cache-dir", str(workdir / "edge-cache"), "--no-access-log"]
        if lookup == "edge-disk":
            cmd += ["--cache-ram", "0"]
    with open(workdir / "legato-stderr.log", "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_listening(port, proc)
        yield port, proc.pid
    finally:
        stop(proc)


def worker_main(www: Path, port: int) -> None:
    """The ``files`` variant: serve() with a lookup that opens the file, until SIGTERM."""
    from legato.server import new_event_loop

    if os.environ.get("LEGATO_BENCH_LOOP") == "asyncio":
        asyncio.run(_worker(www, port))
    else:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(_worker(www, port))


class FileHit:
    """A hit on a file: opened per request, closed by the fast path (never renewed)."""

    __slots__ = ("_fd", "age", "body", "cached", "size")
    renewable = False

    def __init__(self, path: str, cached: Any) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.cached = cached
        self.age = 0
        self.size = cached.size
        self.body = None

    def renew(self, now: float) -> bool:
        return False

    def count(self, status: int, sent: int) -> None:
        pass  # nginx counts nothing either (access_log off)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        os.close(self._fd)


def stored_headers(path: Path) -> tuple[tuple[str, str], ...]:
    from legato import http as h

    st = path.stat()
    return (("Content-Type", "audio/mp4"), ("ETag", h.strong_etag(f"{st.st_ino:x}-{st.st_size:x}")),
            ("Last-Modified", h.http_date(st.st_mtime)), ("Cache-Control", HIT_FIELDS["Cache-Control"]))


def file_lookup(www: Path) -> Any:
    """Hits straight from the files: an open per hit."""
    from cache.respond import Cached

    now = time.time()
    objects = {"/" + p.relative_to(www).as_posix(): (str(p), Cached.from_stored(200, stored_headers(p),
                                                                                p.stat().st_size, now))
               for p in sorted(www.rglob("*")) if p.is_file()}

    def lookup(target: str, request_headers: Sequence[tuple[str, str]], now: float) -> FileHit | None:
        found = objects.get(target)
        return FileHit(*found) if found is not None else None

    return lookup


async def _worker(www: Path, port: int) -> None:
    from aiohttp import web

    from cache.fastpath import serve

    lookup = file_lookup(www)
    app = web.Application()
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = await serve(sock, runner, lookup, "bench")
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    print(f"legato listening on http://127.0.0.1:{port}", flush=True)
    await stopped.wait()
    await server.shutdown(2.0)
    await runner.cleanup()


# --------------------------------------------------------------------------
# Load


@dataclass
class Run:
    """One measured wrk run against one server."""

    server: str  # "nginx" or "legato[-mode]"
    size: int
    connections: int
    round: int
    requests: int
    seconds: float
    rps: float
    latency_ms: dict[str, float]  # p50, p75, p90, p99
    errors: dict[str, int]
    server_cpu_s: float
    cpu_us_per_request: float
    wrk_cpu_s: float
    other_cpu_s: float  # everything else on the machine during the run
    loadavg: tuple[float, float, float]


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_latency(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests, seconds, req/s, latency percentiles and errors from wrk's report."""
    m = re.search(r"(\d+) requests in ([0-9.]+)(us|ms|s|m)", output)
    if not m:
        raise ValueError(f"cannot parse wrk output:\n{output}")
    seconds = float(m.group(2)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
    latency = {f"p{p}": parse_latency(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", output, re.MULTILINE)}
    errors: dict[str, int] = {}
    if e := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        errors.update(zip(("connect", "read", "write", "timeout"), map(int, e.groups()), strict=True))
    if e := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors["non_2xx_3xx"] = int(e.group(1))
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    return {"requests": int(m.group(1)), "seconds": seconds, "rps": float(rps.group(1)) if rps else 0.0,
            "latency_ms": latency, "errors": errors}


def wrk(url: str, connections: int, seconds: float, threads: int) -> tuple[str, float]:
    """Run wrk; its report and its own CPU seconds."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    output = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{output}")
    return output, usage.ru_utime + usage.ru_stime


def object_path(size: int) -> str:
    """Where the object of ``size`` bytes lives (in the URL space, so an edge caches it)."""
    return f"/tracks/bench/r{size}/seg-00001.m4s"


def check_hit(port: int, path: str) -> None:
    """After a measured run: the edge answers ``path`` from its cache (the run measured hits, not misses)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        response.read()
        if response.headers.get("X-Cache") != "HIT":
            raise RuntimeError(f"port {port}{path}: X-Cache {response.headers.get('X-Cache')!r}, not a HIT")


def check_object(port: int, path: str, expected: bytes) -> None:
    """One plain GET: both servers must send the same bytes before they are compared."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        body = response.read()
        if response.status != 200 or body != expected:
            raise RuntimeError(f"port {port}{path}: status {response.status}, {len(body)} bytes")


def measure(name: str, port: int, pid: int, path: str, size: int, connections: int, rnd: int,
            args: argparse.Namespace) -> Run:
    url = f"http://127.0.0.1:{port}{path}"
    if args.warmup > 0:
        wrk(url, connections, args.warmup, args.wrk_threads)
    cpu0, busy0 = cpu_seconds(pid), machine_busy_seconds()
    output, wrk_cpu = wrk(url, connections, args.duration, args.wrk_threads)
    cpu = cpu_seconds(pid) - cpu0
    busy = machine_busy_seconds() - busy0
    parsed = parse_wrk(output)
    requests = parsed["requests"]
    return Run(server=name, size=size, connections=connections, round=rnd, requests=requests,
               seconds=parsed["seconds"], rps=parsed["rps"], latency_ms=parsed["latency_ms"],
               errors=parsed["errors"], server_cpu_s=round(cpu, 3),
               cpu_us_per_request=round(cpu / requests * 1e6, 2) if requests else float("nan"),
               wrk_cpu_s=round(wrk_cpu, 3), other_cpu_s=round(max(0.0, busy - cpu - wrk_cpu), 3),
               loadavg=os.getloadavg())


# --------------------------------------------------------------------------
# Report


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(runs: list[Run], variants: list[str]) -> list[dict[str, Any]]:
    rows = []
    keys = sorted({(r.size, r.connections) for r in runs})
    for name in variants:
        for size, conns in keys:
            mine = [r for r in runs if (r.server, r.size, r.connections) == (name, size, conns)]
            theirs = [r for r in runs if (r.server, r.size, r.connections) == ("nginx", size, conns)]
            if not mine or not theirs:
                continue
            row: dict[str, Any] = {"legato": name, "size": size, "connections": conns}
            for label, group in (("nginx", theirs), ("legato", mine)):
                row[f"{label}_rps"] = round(median([r.rps for r in group]), 1)
                row[f"{label}_p99_ms"] = round(median([r.latency_ms.get("p99", float("nan")) for r in group]), 3)
                row[f"{label}_cpu_us"] = round(median([r.cpu_us_per_request for r in group]), 2)
                row[f"{label}_total_cpu_us"] = round(median([(r.server_cpu_s + r.wrk_cpu_s) / r.requests * 1e6
                                                             for r in group if r.requests]), 2)
            paired = {r.round: r for r in theirs}
            pairs = [(r, paired[r.round]) for r in mine if r.round in paired]
            for label, value in (("rps", lambda r: r.rps), ("p99", lambda r: r.latency_ms.get("p99", float("nan"))),
                                 ("cpu", lambda r: r.cpu_us_per_request),
                                 ("total_cpu", lambda r: (r.server_cpu_s + r.wrk_cpu_s) / max(1, r.requests))):
                ratios = sorted(value(a) / value(b) for a, b in pairs if value(b))
                row[f"{label}_ratio"] = round(median(ratios), 3)
                row[f"{label}_ratio_range"] = (round(ratios[0], 3), round(ratios[-1], 3)) if ratios else None
            row["targets_met"] = (row["rps_ratio"] >= TARGETS["rps_ratio_min"]
                                  and row["p99_ratio"] <= TARGETS["p99_ratio_max"]
                                  and row["cpu_ratio"] <= TARGETS["cpu_ratio_max"])
            rows.append(row)
    return rows


def machine_facts() -> dict[str, Any]:
    import aiohttp
    import uvloop

    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    nginx_v = subprocess.run([nginx_binary(), "-v"], check=False, capture_output=True, text=True).stderr.strip()
    wrk_v = subprocess.run(["wrk", "-v"], check=False, capture_output=True, text=True).stdout.splitlines()[0].strip()
    return {"nproc": os.cpu_count(), "cpu_model": cpu_model, "kernel": platform.release(),
            "python": platform.python_version(), "aiohttp": aiohttp.__version__, "uvloop": uvloop.__version__,
            "nginx": nginx_v.removeprefix("nginx version: "), "wrk": wrk_v.split(" [")[0],
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def write_report(out: Path, facts: dict[str, Any], args: argparse.Namespace, runs: list[Run],
                 rows: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    settings = {"sizes": args.sizes, "connections": args.connections, "duration_s": args.duration,
                "settle_s": args.settle,
                "warmup_s": args.warmup, "rounds": args.rounds, "legato_modes": args.legato_modes,
                "loop": args.loop, "lookup": args.lookup, "wrk_threads": args.wrk_threads,
                "nginx_tcp_nopush": args.nginx_tcp_nopush}
    data = {"machine": facts, "settings": settings, "targets": TARGETS, "summary": rows,
            "runs": [asdict(r) for r in runs]}
    (out / "serve_vs_nginx.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        "# Cache hits: Legato fast path vs nginx",
        "",
        "Generated by `bench/serve_vs_nginx.py` (see its docstring for the method). Ratios are Legato / nginx,",
        (f"medians of the per-round ratios (range in brackets) of {args.rounds} alternating runs of "
         f"{args.duration:g} s each (after {args.warmup:g} s warm-up; every server settled first with "
         f"{args.settle:g} s of load),"),
        (f"wrk with {args.wrk_threads} thread(s), keep-alive, one URL per run; Legato on {args.loop}: a real "
         f"`legato edge` with the default config serving hits from its cache (edge), the same without its RAM "
         f"tier (edge-disk), or the fast path alone straight from the files (files). Targets: requests/s ≥ "
        f"{TARGETS['rps_ratio_min']}x, p99 ≤ {TARGETS['p99_ratio_max']}x, CPU/request ≤ {TARGETS['cpu_ratio_max']}x."),
        "",
        ("| legato (mode-lookup) | object | conns | rps ratio | p99 ratio | CPU/req ratio | nginx rps | legato rps "
         "| nginx p99 ms | legato p99 ms | nginx CPU µs/req | legato CPU µs/req | server+wrk CPU ratio | targets |"),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['legato'].removeprefix('legato-')} | {r['size'] // 1000} kB | {r['connections']} "
            f"| {_ratio(r, 'rps')} | {_ratio(r, 'p99')} | {_ratio(r, 'cpu')} "
            f"| {r['nginx_rps']:.0f} | {r['legato_rps']:.0f} | {r['nginx_p99_ms']:.2f} | {r['legato_p99_ms']:.2f} "
            f"| {r['nginx_cpu_us']:.1f} | {r['legato_cpu_us']:.1f} | {r['total_cpu_ratio']:.2f} "
            f"| {'met' if r['targets_met'] else 'missed'} |"
        )
    other = [r.other_cpu_s / r.seconds for r in runs if r.seconds]
    errors = sum(sum(r.errors.values()) for r in runs)
    lines += [
        "",
        (f"Machine: {facts['nproc']} CPUs ({facts['cpu_model']}), Linux {facts['kernel']}; Python {facts['python']}, "
        f"aiohttp {facts['aiohttp']}, uvloop {facts['uvloop']}, nginx {facts['nginx']}, {facts['wrk']}; "
        f"{facts['date']}."),
        "",
        (f"Other load on the machine during the measured runs (CPU-seconds per second, besides server and wrk): "
        f"median {median(other):.2f}, max {max(other, default=0):.2f}. wrk socket errors and non-2xx "
        f"responses over all runs: {errors}."),
        "",
        ("CPU/req is the server process's utime + stime per completed request. On loopback much of the *receiving* "
         "side's TCP work runs in the sender's softirq context and is charged to whichever process is on the CPU, "
         "and packetization (tcp_nopush / MSG_MORE) moves costs by large factors, so the server+wrk column (both "
         "processes' CPU per request, ratio Legato / nginx) is given as a cross-check."),
        "",
    ]
    (out / "serve_vs_nginx.md").write_text("\n".join(lines))


# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        worker_main(Path(args.worker[0]), int(args.worker[1]))
        return 0
    bad = [m for m in args.legato_modes if m not in ("sendfile", "no-sendfile")]
    bad += [k for k in args.lookup if k not in LOOKUPS]
    variants = [(mode, kind) for kind in args.lookup for mode in args.legato_modes]
    if bad or args.rounds < 1 or args.duration <= 0:
        sys.exit(f"serve_vs_nginx: bad settings: {bad}, rounds {args.rounds}, duration {args.duration}")
    if args.loop == "asyncio" and any(kind != "files" for kind in args.lookup):
        sys.exit("serve_vs_nginx: --loop asyncio applies to the files variant only (legato edge runs uvloop)")
    ensure_tools(install=not args.no_install)
    facts = machine_facts()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="legato-serve-bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        www = work / "www"
        objects = {}
        for size in args.sizes:
            data = os.urandom(size)
            path = object_path(size)
            (www / path[1:]).parent.mkdir(parents=True)
            (www / path[1:]).write_bytes(data)
            objects[size] = data
        origin = None
        if any(kind.startswith("edge") for kind in args.lookup):  # where the edge fills its cache from
            (work / "origin").mkdir()
            origin_port, _ = stack.enter_context(run_nginx(www, work / "origin", args.nginx_tcp_nopush))
            origin = f"http://127.0.0.1:{origin_port}"
        # Every server runs for the whole benchmark, as it would in production: a new process's
        # first seconds under load are not its steady state (see --settle).
        (work / "nginx").mkdir(exist_ok=True)
        servers = {"nginx": stack.enter_context(run_nginx(www, work / "nginx", args.nginx_tcp_nopush))}
        for mode, kind in variants:
            servers[f"legato-{mode}-{kind}"] = stack.enter_context(run_legato(www, work, mode, args.loop, kind, origin))
        for port, _pid in servers.values():
            for size in args.sizes:
                check_object(port, object_path(size), objects[size])  # an edge fills its cache here
        if args.settle > 0:
            for name, (port, _pid) in servers.items():
                print(f"  settling {name} ({args.settle:g} s of load)", flush=True)
                for size in args.sizes:
                    wrk(f"http://127.0.0.1:{port}{object_path(size)}", max(args.connections),
                        args.settle / len(args.sizes), args.wrk_threads)
        for conns in args.connections:
            for size in args.sizes:
                path = object_path(size)
                for rnd in range(args.rounds):
                    for name, (port, pid) in servers.items():
                        runs.append(measure(name, port, pid, path, size, conns, rnd, args))
                        if "-edge" in name:
                            check_hit(port, path)
                        print(_line(runs[-1]), flush=True)
    rows = summarise(runs, [f"legato-{mode}-{kind}" for mode, kind in variants])
    write_report(args.out, facts, args, runs, rows)
    for r in rows:
        print(f"{r['legato']} {r['size'] // 1000} kB x{r['connections']}: rps {r['rps_ratio']:.2f}x, "
              f"p99 {r['p99_ratio']:.2f}x, CPU/req {r['cpu_ratio']:.2f}x ({'met' if r['targets_met'] else 'missed'})")
    print(f"results: {args.out / 'serve_vs_nginx.md'}")
    return 0


def _ratio(row: dict[str, Any], label: str) -> str:
    """A median paired ratio in bold, with its range."""
    low_high = row.get(f"{label}_ratio_range")
    spread = f" ({low_high[0]:.2f}–{low_high[1]:.2f})" if low_high else ""
    return f"**{row[f'{label}_ratio']:.2f}**{spread}"


def _line(r: Run) -> str:
    return (f"  {r.server:20s} {r.size // 1000:4d} kB c={r.connections:<4d} round {r.round}: {r.rps:9.0f} req/s "
            f"p99 {r.latency_ms.get('p99', float('nan')):7.2f} ms  {r.cpu_us_per_request:6.1f} µs CPU/req  "
            f"(others {r.other_cpu_s / r.seconds if r.seconds else 0:.2f} CPU)")


if __name__ == "__main__":
    sys.exit(main())
