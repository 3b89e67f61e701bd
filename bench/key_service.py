"""The key endpoint under load: requests/s, and p99 latency at a fixed 1,000 requests/s.

What a capacity planner needs to know about the key service: how many key
requests one origin worker answers per second, and how long a player waits
for its key at a realistic steady load.  Every request does the real work:
verify an Ed25519 session token, take a token from the session's rate-limit
bucket, read the kid from the SQLite key store and unwrap it (AES-256-GCM).

Setup (in a temporary directory, torn down afterwards): a key store with one
key for each of ``--tracks`` tracks, a master key file, an Ed25519 signing
key pair, ``--sessions`` session tokens each for one random track (requests
spread over sessions as listeners do; the per-session rate limit, 10/s with
bursts of 20 as in config/drm.toml, is the production one, not switched
off), and one *fresh* token per request of the cold runs.  One real
``legato origin`` process serves them with one worker, access log on
(written to a file, as in production).

Tokens and the signature memo: the key service checks a token's Ed25519
signature once and remembers it (drm.tokens.Verifier), so a request whose
token the worker has seen costs less than one whose token is new.  A
session asks origin for only a few keys (one per rendition it plays, or one
licence), so at origin most tokens are new: the **cold** runs, a token
never seen before on every request, are the honest measure; the **warm**
run (the sessions' tokens over and over) is the best case.

Runs, one after the other, each after ``--warmup`` untimed seconds:

1. **closed loop, warm**: ``wrk`` (one thread, ``--connections`` keep-alive
   connections, a Lua script cycling through the sessions' key URLs) for
   ``--wrk-seconds``: the most requests/s one worker answers.
2. **fixed rate** (open loop): ``--rate`` requests per second from an
   asyncio client on uvloop, one sent every 1/rate s whatever the answers do
   (over a pool of keep-alive connections, opening more when all are busy,
   up to 256), each timed from its *scheduled* send time to its last byte,
   so a stall is charged to every request it delays (no coordinated
   omission).  Target: p99 < 10 ms.  ``GET /keys/{kid}`` cold for
   ``--seconds``, warm for ``--warm-seconds``, then ``POST
   /license/clearkey`` (a one-kid EME licence request) cold for
   ``--licence-seconds``.

Server CPU per request comes from /proc/PID/stat over each run.  The client
shares the machine (2 cores here: the client on one, the origin on the
other, and whatever else runs), so latencies are upper bounds and the
closed-loop figure is a floor; the load average is recorded.

    python bench/key_service.py                     # ~55 s; writes bench/results/key_service.{json,md}
    python bench/key_service.py --seconds 5 --warm-seconds 0 --wrk-seconds 3 --licence-seconds 0 --out /tmp/k

Exits 0 whether or not the target is met; 1 when a run sees errors or non-200 answers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.serve_vs_nginx import cpu_seconds, parse_wrk
from drm.clearkey import request_body
from drm.keys import KeyStore, new_content_key
from drm.tokens import issue

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
TARGET_P99_MS = 10.0
MAX_CONNECTIONS = 256
WRK_LUA = """\
local paths = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  i = math.random(#paths)
end
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=1000.0, help="fixed request rate (default: 1000/s)")
    p.add_argument("--seconds", type=float, default=15.0, help="fixed-rate cold key run length (default: 15)")
    p.add_argument("--warm-seconds", type=float, default=8.0,
                   help="fixed-rate warm key run length, 0 to skip (default: 8)")
    p.add_argument("--licence-seconds", type=float, default=8.0,
                   help="fixed-rate cold licence run length, 0 to skip (default: 8)")
    p.add_argument("--wrk-seconds", type=float, default=8.0, help="closed-loop wrk run length, 0 to skip (default: 8)")
    p.add_argument("--warmup", type=float, default=2.0, help="untimed seconds before each run (default: 2)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default: 32)")
    p.add_argument("--tracks", type=int, default=500, help="tracks (one key each) in the key store (default: 500)")
    p.add_argument("--sessions", type=int, default=5000, help="distinct session tokens (default: 5000)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results directory (default: {DEFAULT_OUT})")
    return p.parse_args(argv)


# ---------------------------------------------------------------- setup


@dataclass
class Fixture:
    root: Path
    config: Path
    keys: dict[str, Any]  # track -> ContentKey
    signer: Any  # Ed25519PrivateKey
    key_paths: list[str]  # /keys/{kid}?token=... one per session

    def fresh(self, count: int, seed: int) -> list[tuple[str, str, bytes]]:
        """``count`` requests with tokens never used before: (key path, licence path, licence body)."""
        rng = random.Random(seed)
        now = time.time()
        tracks = sorted(self.keys)
        out = []
        for i in range(count):
            track = rng.choice(tracks)
            token = issue(self.signer, "k1", user=f"u{seed}-{i}", session=f"fresh-{seed}-{i}", tracks=(track,),
                          now=now, ttl=3600)
            kid = self.keys[track].kid
            out.append((f"/keys/{kid.hex()}?token={token}", f"/license/clearkey?token={token}", request_body([kid])))
        return out


def make_fixture(root: Path, tracks: int, sessions: int) -> Fixture:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    store = root / "store"
    (store / "tracks").mkdir(parents=True)
    secrets = root / "secrets"
    secrets.mkdir(mode=0o700)
    master = os.urandom(32)
    (secrets / "master.key").write_text(base64.b64encode(master).decode())
    signer = Ed25519PrivateKey.generate()
    (secrets / "k1.pub.pem").write_bytes(signer.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    keys = {}
    with KeyStore.open(secrets / "keys.sqlite", master) as ks:
        for i in range(tracks):
            keys[f"track-{i}"] = key = new_content_key()
            ks.put(f"track-{i}", key)
    now = time.time()
    rng = random.Random(7)
    key_paths = []
    for s in range(sessions):
        track = f"track-{rng.randrange(tracks)}"
        token = issue(signer, "k1", user=f"user-{s}", session=f"session-{s}", tracks=(track,), now=now, ttl=3600)
        key_paths.append(f"/keys/{keys[track].kid_hex}?token={token}")
    config = root / "origin.toml"
    config.write_text(f'store = "{store}"\nlisten = "127.0.0.1:0"\nworkers = 1\naccess_log = true\n'
                      f'[keys]\nstore = "{secrets / "keys.sqlite"}"\nmaster_key_file = "{secrets / "master.key"}"\n'
                      f'[tokens]\nrate_per_session = 10.0\nburst = 20\n'
                      f'[tokens.public_keys]\nk1 = "{secrets / "k1.pub.pem"}"\n')
    return Fixture(root, config, keys, signer, key_paths)


@contextmanager
def origin(fixture: Fixture) -> Iterator[tuple[str, int]]:
    """A real `legato origin` (1 worker); yields (base URL, pid)."""
    from servers import node_process

    with node_process("origin", "--config", str(fixture.config)) as node:
        yield node.url, node.pid


# ---------------------------------------------------------------- fixed-rate client


@dataclass
class FixedRate:
    name: str
    tokens: str  # "new per request" or "N sessions, repeated"
    rate: float
    seconds: float
    sent: int
    ok: int
    errors: dict[str, int]
    achieved_rps: float
    latency_ms: dict[str, float]
    max_connections: int
    server_cpu_s: float
    cpu_us_per_request: float
    client_cpu_s: float


class Conn:
    """A keep-alive HTTP/1.1 connection speaking just enough to read our answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status


def raw_request(host: str, path: str, body: bytes | None) -> bytes:
    if body is None:
        return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def fixed_rate(url: str, requests: list[bytes], rate: float, seconds: float) -> tuple[list[float], dict[str, int], int, int]:
    """Send ``requests`` (cycled) at ``rate``/s for ``seconds``; latencies (ms) from scheduled send times."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    idle: list[Conn] = []
    opened = 0
    latencies: list[float] = []
    errors: dict[str, int] = {}
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()

    async def one(raw: bytes, scheduled: float) -> None:
        nonlocal opened
        conn = idle.pop() if idle else None
        try:
            if conn is None:
                if opened >= MAX_CONNECTIONS:
                    errors["no connection"] = errors.get("no connection", 0) + 1
                    return
                opened += 1
                conn = Conn(*await asyncio.open_connection(host, int(port)))
            status = await conn.request(raw)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            opened -= 1
            return
        latencies.append((time.perf_counter() - scheduled) * 1000)
        if status != 200:
            errors[f"status {status}"] = errors.get(f"status {status}", 0) + 1
        idle.append(conn)

    start = time.perf_counter() + 0.05  # uvloop's loop.time() ticks in whole milliseconds
    total = int(rate * seconds)
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        task = loop.create_task(one(requests[i % len(requests)], scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    for conn in idle:
        conn.writer.close()
    return latencies, errors, total, opened


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def run_fixed(name: str, tokens: str, url: str, pid: int, warmup: list[bytes], requests: list[bytes],
              args: argparse.Namespace, seconds: float) -> FixedRate:
    import uvloop

    if args.warmup > 0:
        uvloop.run(fixed_rate(url, warmup, args.rate, args.warmup))
    cpu0, client0 = cpu_seconds(pid), time.process_time()
    began = time.monotonic()
    latencies, errors, sent, conns = uvloop.run(fixed_rate(url, requests, args.rate, seconds))
    elapsed = time.monotonic() - began
    cpu, client = cpu_seconds(pid) - cpu0, time.process_time() - client0
    ok = len(latencies) - sum(v for k, v in errors.items() if k.startswith("status"))
    return FixedRate(name=name, tokens=tokens, rate=args.rate, seconds=seconds, sent=sent, ok=ok, errors=errors,
                     achieved_rps=round(len(latencies) / elapsed, 1),
                     latency_ms={f"p{p}": round(percentile(latencies, p), 3) for p in (50, 90, 99, 99.9)}
                     | {"max": round(max(latencies, default=float("nan")), 3)},
                     max_connections=conns, server_cpu_s=round(cpu, 3),
                     cpu_us_per_request=round(cpu / max(1, len(latencies)) * 1e6, 1),
                     client_cpu_s=round(client, 3))


def run_wrk(url: str, pid: int, fixture: Fixture, args: argparse.Namespace) -> dict[str, Any]:
    script = fixture.root / "keys.lua"
    script.write_text(WRK_LUA)
    paths = fixture.root / "paths.txt"
    paths.write_text("\n".join(fixture.key_paths) + "\n")
    cmd = ["wrk", "-t1", f"-c{args.connections}", "--latency", "-s", str(script)]
    if args.warmup > 0:
        subprocess.run([*cmd, f"-d{max(1, round(args.warmup))}s", url, str(paths)], check=True, capture_output=True)
    cpu0 = cpu_seconds(pid)
    out = subprocess.run([*cmd, f"-d{max(1, round(args.wrk_seconds))}s", url, str(paths)], check=True,
                         capture_output=True, text=True).stdout
    cpu = cpu_seconds(pid) - cpu0
    parsed = parse_wrk(out)
    parsed["server_cpu_s"] = round(cpu, 3)
    parsed["cpu_us_per_request"] = round(cpu / max(1, parsed["requests"]) * 1e6, 1)
    parsed["connections"] = args.connections
    return parsed


# ---------------------------------------------------------------- report


def report(facts: dict[str, Any], closed: dict[str, Any] | None, fixed: list[FixedRate]) -> str:
    lines = ["# Key service under load", "",
             (f"Measured {facts['date']} on {facts['machine']} (load average {facts['loadavg_before'][0]:.1f} before, "
             f"{facts['loadavg_after'][0]:.1f} after: the machine is shared); Python {facts['python']}, one "
             f"`legato origin` worker (access log on), {facts['tracks']} tracks, production rate limit (10/s, "
             f"burst 20 per session). Command: `{facts['command']}`."), ""]
    if closed is not None:
        lat = closed["latency_ms"]
        lines += ["## Closed loop (wrk), warm: the most one worker answers", "",
                  "| tokens | connections | requests/s | p50 ms | p99 ms | server CPU µs/req | errors |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
                  (f"| {facts['sessions']} sessions, repeated | {closed['connections']} | {closed['rps']:.0f} | "
                   f"{lat.get('p50', float('nan')):.2f} | {lat.get('p99', float('nan')):.2f} | "
                   f"{closed['cpu_us_per_request']:.0f} | {closed['errors'] or 'none'} |"), ""]
    lines += [f"## Fixed rate (open loop, latency from the scheduled send time); target p99 < {TARGET_P99_MS:g} ms",
              "",
              ("| endpoint | tokens | rate/s | seconds | answered/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | "
               "server CPU µs/req | connections | errors | p99 target |"),
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for f in fixed:
        lat = f.latency_ms
        met = "met" if lat["p99"] < TARGET_P99_MS else "MISSED"
        lines.append(f"| {f.name} | {f.tokens} | {f.rate:.0f} | {f.seconds:g} | {f.achieved_rps:.0f} | "
                     f"{lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} | {lat['p99.9']:.2f} | "
                     f"{lat['max']:.2f} | {f.cpu_us_per_request:.0f} | {f.max_connections} | "
                     f"{f.errors or 'none'} | {met} |")
    lines += ["", ("Every answer was checked for status 200 (a 401/403/429 would count as an error). Cold: every "
                   "request carries a token the worker has never seen (one Ed25519 verification each); warm: the "
                   "sessions' tokens again and again (signatures remembered). The client shares the 2-CPU machine "
                   "with the server and with whatever else runs, so latencies are upper bounds. Method: the "
                   "`bench/key_service.py` docstring.")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.wrk_seconds > 0 and not shutil.which("wrk"):
        print("key_service: wrk is not installed (apt-get install wrk), or pass --wrk-seconds 0", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    loadavg_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="legato-bench-keys-") as tmp:
        fixture = make_fixture(Path(tmp), args.tracks, args.sessions)
        per_run = round(args.rate * (args.warmup + max(args.seconds, args.licence_seconds)))
        cold = fixture.fresh(per_run, seed=1)
        cold_warmup = fixture.fresh(round(args.rate * args.warmup), seed=2)
        with origin(fixture) as (url, pid):
            host = url.removeprefix("http://")
            closed = run_wrk(url, pid, fixture, args) if args.wrk_seconds > 0 else None
            if closed is not None:
                print(f"closed loop: {closed['rps']:.0f} req/s, p99 {closed['latency_ms'].get('p99')} ms", flush=True)
            new = "new per request"
            fixed = [run_fixed("GET /keys/{kid}", new, url, pid, [raw_request(host, k, None) for k, _, _ in cold_warmup],
                               [raw_request(host, k, None) for k, _, _ in cold], args, args.seconds)]
            if args.warm_seconds > 0:
                warm = [raw_request(host, p, None) for p in fixture.key_paths]
                fixed.append(run_fixed("GET /keys/{kid}", f"{args.sessions} sessions, repeated", url, pid, warm, warm,
                                       args, args.warm_seconds))
            if args.licence_seconds > 0:
                more = fixture.fresh(round(args.rate * (args.warmup + args.licence_seconds)), seed=3)
                fixed.append(run_fixed("POST /license/clearkey", new, url, pid,
                                       [raw_request(host, p, b) for _, p, b in cold_warmup],
                                       [raw_request(host, p, b) for _, p, b in more], args, args.licence_seconds))
            for f in fixed:
                print(f"{f.name} ({f.tokens}) at {f.rate:.0f}/s: p50 {f.latency_ms['p50']} ms, "
                      f"p99 {f.latency_ms['p99']} ms, errors {f.errors or 'none'}", flush=True)
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.machine())
    facts = {"date": datetime.date.today().isoformat(), "machine": f"{os.cpu_count()} x {cpu_model}",
             "python": platform.python_version(), "tracks": args.tracks, "sessions": args.sessions,
             "command": " ".join(["python bench/key_service.py", *(sys.argv[1:] if argv is None else argv)]),
             "loadavg_before": loadavg_before, "loadavg_after": os.getloadavg()}
    (args.out / "key_service.json").write_text(json.dumps(
        {"facts": facts, "closed_loop": closed, "fixed_rate": [asdict(f) for f in fixed],
         "target_p99_ms": TARGET_P99_MS}, indent=2) + "\n")
    (args.out / "key_service.md").write_text(report(facts, closed, fixed))
    print(f"wrote {args.out / 'key_service.md'}")
    bad = (closed is not None and closed["errors"]) or any(f.errors for f in fixed)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
