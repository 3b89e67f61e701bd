"""Listening traces: a synthetic model, a compact file format, and readers for real logs.

A trace is a time-ordered list of requests ``(time, client, object, size)``:
seconds, a client name (who asked: the director keeps a client on one edge),
a cache key (``cache.key``: the canonical URL path, query dropped) and the
object's size in bytes.  ``Trace`` holds it in columns (interned keys and
client names, ``array`` columns), so a few million requests fit in a few
hundred MB and replay quickly.

**The synthetic model** (``TraceModel``, ``generate``).  The per-listen
behaviour is ``cache.sim``'s music workload (``MusicWorkload``), reused, not
copied; this module adds what a catalogue does over a day:

* **Catalogue and popularity**: ``tracks`` tracks, listens pick a popularity
  rank with Zipf(``zipf_s``) weights (rank 1 most popular).  Ranks map to
  track numbers (ids ``t000001`` ...); at the start rank *r* is track *r*.
* **Churn (new releases)**: every ``churn_interval`` seconds,
  ``churn x tracks x churn_interval / 3600`` new tracks (numbers after the
  catalogue, never heard before) enter at uniformly random ranks within the
  top ``churn_top`` of the catalogue; every track below moves down one rank
  and the last one drops out.  ``churn`` is the share of the catalogue
  released per hour (fractions carry over between steps).
* **Viral surge**: from ``surge_at`` for ``surge_seconds``, a share
  ``surge_share`` of listens goes to one track that was deep in the
  catalogue (rank ``tracks // 2`` at the start): the track jumps to the top
  for the window, then falls back.
* **Listens**: arrivals are a Poisson process of ``listen_rate`` per second,
  modulated by a **diurnal** cycle: rate x (1 + ``diurnal`` x cos(2 pi
  (t - ``diurnal_peak``) / ``diurnal_period``)), drawn by thinning, so load
  peaks at ``diurnal_peak`` (seconds into the day) and bottoms 12 h later.
  Each listen belongs to one of ``clients`` clients (uniform), picks a
  rendition by the ladder's shares (the **rendition mix**,
  ``MusicWorkload.renditions``), asks for its manifests and init segment,
  then segments from the first (``seg-00001``) in order; a share of listens
  (per-track Beta around ``skip_probability``) **skips** after an
  exponential time (mean ``skip_mean_seconds``), the rest **play to the
  end**; the player fetches up to ``buffer_seconds`` ahead of where it stops.
  Segment sizes follow the rendition's bit rate (see ``cache.sim``).

Deterministic for a seed: the same model and seed give the same file.

**The file** (``write_csv``): UTF-8 CSV, gzip when the name ends in ``.gz``::

    # legato-trace {"model": {...}, "seed": 1}     (optional; the generator's model)
    time,client,object,size
    0.412,c8812,/tracks/t000017/master.m3u8,750

Times have millisecond resolution.  The file is written under a temporary
name and renamed into place.

**Readers** (``read_trace``), chosen by the first line that is not a comment:

* the CSV above;
* our JSON access log (``legato.logs``: one object per line with ``time``
  (ISO 8601), ``peer``, ``method``, ``path``, ``status``, ``bytes``);
* Common or Combined Log Format
  (``host ident user [10/Oct/2000:13:55:36 -0700] "GET /path HTTP/1.1" 200 2326 ...``).

For logs, the client is the peer address, the object is the cache key of
the path (lines for anything that is not a cached object, e.g. ``/keys/``,
``/metrics``, or that is not a GET/HEAD answered 200, 206 or 304, are
*skipped* and counted), and the size is the byte count of the key's largest
200 response (JSON logs count the head too, ~300 bytes; CLF ``%b`` is the
body alone).  Requests of keys never answered in full (only 206/304/HEAD)
are skipped: their size is unknown.  Lines that do not parse are
*malformed*: counted, the first few reported with their line numbers, and
if nothing parses at all the read fails naming them.  Log lines are sorted
by time (access logs are written when responses finish, slightly out of
order).
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import functools
import gzip
import heapq
import io
import itertools
import json
import math
import os
import random
import re
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TextIO

from cache.key import cache_key
from cache.sim import (
    DEFAULT_RENDITIONS,
    MusicWorkload,
    Rendition,
    Request,
    listen_requests,
    track_facts,
)
from legato import urls

__all__ = [
    "CSV_HEADER",
    "Trace",
    "TraceError",
    "TraceModel",
    "generate",
    "read_trace",
    "write_csv",
]

CSV_HEADER = "time,client,object,size"
MAGIC = "# legato-trace "
MAX_EXAMPLES = 5


class TraceError(Exception):
    """A trace file that cannot be read or written; the message names the file and why."""


# --------------------------------------------------------------------------
# The trace


@dataclass
class Trace:
    """Requests in columns: ``times[i]``, ``client_names[clients[i]]``, ``keys[objects[i]]``, ``sizes[i]``."""

    times: array[float] = field(default_factory=lambda: array("d"))
    clients: array[int] = field(default_factory=lambda: array("l"))
    objects: array[int] = field(default_factory=lambda: array("l"))
    sizes: array[int] = field(default_factory=lambda: array("q"))
    keys: list[str] = field(default_factory=list)
    client_names: list[str] = field(default_factory=list)
    source: str = ""
    model: dict[str, Any] | None = None
    lines: int = 0
    skipped: int = 0
    malformed: int = 0
    examples: list[str] = field(default_factory=list)  # "line N: why" of the first malformed lines
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)  # derived facts cached by the simulator
    _key_index: dict[str, int] = field(default_factory=dict, repr=False)
    _client_index: dict[str, int] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.times)

    def add(self, time: float, client: str, key: str, size: int) -> None:
        """Append one request (keys and client names are interned)."""
        o = self._key_index.get(key)
        if o is None:
            o = self._key_index[key] = len(self.keys)
            self.keys.append(key)
        c = self._client_index.get(client)
        if c is None:
            c = self._client_index[client] = len(self.client_names)
            self.client_names.append(client)
        self.times.append(time)
        self.clients.append(c)
        self.objects.append(o)
        self.sizes.append(size)

    def index_of(self, key: str) -> int | None:
        """The object index of ``key``, or None if the trace never asks for it."""
        return self._key_index.get(key)

    @property
    def duration(self) -> float:
        """Seconds from the first to the last request (0 for fewer than two)."""
        return self.times[-1] - self.times[0] if len(self.times) > 1 else 0.0

    def object_sizes(self) -> list[int]:
        """The last size seen of every object, by object index."""
        sizes = [0] * len(self.keys)
        for o, s in zip(self.objects, self.sizes, strict=True):
            sizes[o] = s
        return sizes

    def working_set_bytes(self) -> int:
        """Bytes of the distinct objects (last size seen): what an infinite cache would hold."""
        return sum(self.object_sizes())

    def requests(self, indices: Iterable[int] | None = None) -> Iterator[Request]:
        """The requests as ``cache.sim.Request`` values (all, or those at ``indices``)."""
        times, objects, sizes, keys = self.times, self.objects, self.sizes, self.keys
        for i in range(len(times)) if indices is None else indices:
            yield Request(times[i], keys[objects[i]], sizes[i])

    def sort_by_time(self) -> None:
        """Order requests by time, keeping the file order of equal times."""
        if all(a <= b for a, b in itertools.pairwise(self.times)):
            return
        order = sorted(range(len(self.times)), key=self.times.__getitem__)
        self.times = array("d", (self.times[i] for i in order))
        self.clients = array("l", (self.clients[i] for i in order))
        self.objects = array("l", (self.objects[i] for i in order))
        self.sizes = array("q", (self.sizes[i] for i in order))

    def summary(self) -> dict[str, Any]:
        """Facts for reports: counts, duration, working set, what was skipped."""
        return {
            "source": self.source,
            "requests": len(self),
            "objects": len(self.keys),
            "clients": len(self.client_names),
            "duration_s": round(self.duration, 3),
            "working_set_bytes": self.working_set_bytes(),
            "requested_bytes": sum(self.sizes),
            "lines": self.lines,
            "skipped_lines": self.skipped,
            "malformed_lines": self.malformed,
            "malformed_examples": list(self.examples),
            "model": self.model,
        }


# --------------------------------------------------------------------------
# The synthetic model


@dataclass(frozen=True, slots=True)
class TraceModel:
    """A day of a catalogue: ``workload`` (listens, see cache.sim) plus churn, surge, diurnal load, clients."""

    workload: MusicWorkload = field(default_factory=MusicWorkload)
    clients: int = 10_000
    churn: float = 0.0  # share of the catalogue released per hour
    churn_top: float = 0.01  # new releases enter within this top share of ranks
    churn_interval: float = 900.0  # seconds between release batches
    surge_at: float | None = None  # seconds from the start; None: no surge
    surge_seconds: float = 1800.0
    surge_share: float = 0.05  # share of listens going to the surging track during the window
    diurnal: float = 0.0  # amplitude of the daily cycle, 0 (flat) to < 1
    diurnal_period: float = 86_400.0
    diurnal_peak: float = 20 * 3600.0  # seconds into the period when load peaks

    def __post_init__(self) -> None:
        problems = []
        if self.clients < 1:
            problems.append(f"clients must be >= 1, got {self.clients}")
        if not 0 <= self.churn <= 1:
            problems.append(f"churn must be in [0, 1] (share of the catalogue per hour), got {self.churn}")
        if not 0 < self.churn_top <= 1:
            problems.append(f"churn_top must be in (0, 1], got {self.churn_top}")
        if self.churn_interval <= 0:
            problems.append(f"churn_interval must be > 0 seconds, got {self.churn_interval}")
        if self.surge_at is not None and (self.surge_at < 0 or self.surge_seconds <= 0):
            problems.append("surge needs a start >= 0 and a duration > 0 seconds")
        if not 0 <= self.surge_share <= 1:
            problems.append(f"surge_share must be in [0, 1], got {self.surge_share}")
        if not 0 <= self.diurnal < 1:
            problems.append(f"diurnal amplitude must be in [0, 1), got {self.diurnal}")
        if self.diurnal_period <= 0:
            problems.append(f"diurnal_period must be > 0 seconds, got {self.diurnal_period}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def surge_track(self) -> int:
        """The number of the track that surges (deep in the catalogue at the start)."""
        return max(1, self.workload.tracks // 2)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> TraceModel:
        """The model back from ``to_json`` (ValueError for unknown or bad fields)."""
        w = dict(doc.get("workload") or {})
        renditions = tuple(Rendition(**r) for r in w.pop("renditions", [asdict(r) for r in DEFAULT_RENDITIONS]))
        workload = MusicWorkload(**w, renditions=renditions)
        rest = {f.name: doc[f.name] for f in fields(cls) if f.name != "workload" and f.name in doc}
        return cls(workload=workload, **rest)

    def catalogue_bytes(self) -> int:
        """Approximate bytes of the starting catalogue, every rendition (for scaling results)."""
        w = self.workload
        per_second = sum(r.kbps for r in w.renditions) * 1000 / 8
        # mean of a log-normal: median x exp(sigma^2 / 2)
        seconds = w.track_seconds_median * math.exp(w.track_seconds_sigma ** 2 / 2)
        return int(w.tracks * seconds * per_second)

    def rate_at(self, t: float) -> float:
        """Listens per second at virtual time ``t``."""
        phase = 2 * math.pi * (t - self.diurnal_peak) / self.diurnal_period
        return self.workload.listen_rate * (1 + self.diurnal * math.cos(phase))


def generate(model: TraceModel, seed: int = 0) -> Iterator[tuple[str, Request]]:
    """The requests of ``model.workload.listens`` listens as ``(client, request)``, in time order.

    Lazy and memory-bounded by the listens in progress (and the rank table);
    deterministic for a seed.  Ties in time keep listen order.
    """
    w = model.workload
    rng = random.Random(seed)
    cum_popularity = list(itertools.accumulate(1.0 / rank ** w.zipf_s for rank in range(1, w.tracks + 1)))
    cum_share = list(itertools.accumulate(r.share for r in w.renditions))
    order = list(range(1, w.tracks + 1))  # order[rank - 1] = track number
    top = max(1, int(model.churn_top * w.tracks))
    next_number = w.tracks + 1
    releases_due = 0.0
    next_churn = model.churn_interval
    surge_end = None if model.surge_at is None else model.surge_at + model.surge_seconds
    peak_rate = w.listen_rate * (1 + model.diurnal)
    facts: dict[int, Any] = {}
    pending: list[tuple[float, int, int, str, Request]] = []
    t = 0.0
    for listen in range(w.listens):
        while True:  # thinning: candidate arrivals at the peak rate, kept with rate(t) / peak
            t += rng.expovariate(peak_rate)
            if model.diurnal == 0 or rng.random() * peak_rate <= model.rate_at(t):
                break
        while model.churn > 0 and t >= next_churn:
            releases_due += model.churn * w.tracks * model.churn_interval / 3600
            while releases_due >= 1:
                releases_due -= 1
                order.insert(rng.randrange(top), next_number)
                order.pop()
                next_number += 1
            next_churn += model.churn_interval
        while pending and pending[0][0] <= t:
            item = heapq.heappop(pending)
            yield item[3], item[4]
        if surge_end is not None and model.surge_at is not None and model.surge_at <= t < surge_end \
                and rng.random() < model.surge_share:
            number = model.surge_track
        else:
            number = order[_pick(rng, cum_popularity)]
        track = facts.get(number) or facts.setdefault(number, track_facts(w, seed, number))
        rendition = w.renditions[_pick(rng, cum_share)]
        client = f"c{rng.randrange(model.clients)}"
        for i, req in enumerate(listen_requests(w, rng, track, rendition, t)):
            heapq.heappush(pending, (req.time, listen, i, client, req))
        if len(facts) > 4 * w.tracks:  # new releases keep coming: forget facts of old ones (re-drawn the same)
            facts.clear()
    while pending:
        item = heapq.heappop(pending)
        yield item[3], item[4]


def _pick(rng: random.Random, cumulative: list[float]) -> int:
    return min(bisect.bisect(cumulative, rng.random() * cumulative[-1]), len(cumulative) - 1)


# --------------------------------------------------------------------------
# Writing


@contextlib.contextmanager
def atomic_text(path: Path, *, compress: bool | None = None) -> Iterator[TextIO]:
    """A text stream to a temporary file beside ``path``, renamed into place on success only."""
    compress = path.name.endswith(".gz") if compress is None else compress
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            binary: Any = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) if compress else raw
            with binary, io.TextIOWrapper(binary, encoding="utf-8", newline="\n") as text:
                yield text
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_csv(path: Path, rows: Iterable[tuple[str, Request]], *, header: dict[str, Any] | None = None,
              progress: Callable[[int], None] | None = None) -> int:
    """Write ``(client, request)`` rows as the trace CSV; return the number of requests.

    ``header`` (e.g. the model and seed) goes into the ``# legato-trace`` line.
    """
    n = 0
    with atomic_text(path) as out:
        if header is not None:
            out.write(MAGIC + json.dumps(header, separators=(",", ":")) + "\n")
        out.write(CSV_HEADER + "\n")
        buf: list[str] = []
        for client, req in rows:
            buf.append(f"{req.time:.3f},{client},{req.key},{req.size}\n")
            n += 1
            if len(buf) == 8192:
                out.write("".join(buf))
                buf.clear()
                if progress is not None:
                    progress(8192)
        out.write("".join(buf))
        if progress is not None:
            progress(len(buf))
    return n


# --------------------------------------------------------------------------
# Reading

_CLF = re.compile(
    r'(?P<host>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<method>[A-Z]+) (?P<target>\S+)(?: [^"]*)?" '
    r"(?P<status>\d{3}) (?P<bytes>\d+|-)(?: .*)?"
)
_CLF_TIME = "%d/%b/%Y:%H:%M:%S %z"
_LOG_STATUSES = frozenset({200, 206, 304})


class _Malformed(Exception):
    pass


def _open_text(path: Path) -> TextIO:
    try:
        with path.open("rb") as f:
            magic = f.read(2)
        if magic == b"\x1f\x8b":
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
        return path.open(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise TraceError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TraceError(f"{path}: is a directory, not a trace file") from None
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror or exc}") from None


def read_trace(path: Path, fmt: str = "auto") -> Trace:
    """Read a trace file (``fmt``: auto, csv, json or clf); TraceError when nothing usable is in it."""
    if fmt not in ("auto", "csv", "json", "clf"):
        raise TraceError(f"unknown trace format {fmt!r}: use auto, csv, json or clf")
    trace = Trace(source=str(path))
    pending: list[tuple[float, str, str, int | None]] = []  # logs: sizes resolved at the end
    full_size: dict[str, int] = {}
    kind = None if fmt == "auto" else fmt
    try:
        with _open_text(path) as text:
            for number, line in enumerate(text, 1):
                trace.lines = number
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                if line.startswith("#"):
                    if line.startswith(MAGIC) and trace.model is None:
                        trace.model = _header_model(line)
                    continue
                if kind is None:
                    kind = "csv" if line.replace(" ", "") == CSV_HEADER else "json" if line.lstrip().startswith(
                        "{") else "clf"
                if kind == "csv" and line.replace(" ", "") == CSV_HEADER:
                    continue
                try:
                    parsed = _parse_line(kind, line)
                except _Malformed as exc:
                    trace.malformed += 1
                    if len(trace.examples) < MAX_EXAMPLES:
                        trace.examples.append(f"line {number}: {exc}")
                    continue
                if parsed is None:
                    trace.skipped += 1
                    continue
                time, client, key, size, full = parsed
                if kind == "csv":
                    assert size is not None
                    trace.add(time, client, key, size)
                else:
                    if full and size is not None:
                        full_size[key] = max(size, full_size.get(key, 0))
                    pending.append((time, client, key, size if full else None))
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise TraceError(f"{path}: cannot read: {exc}") from None
    for time, client, key, size in pending:
        known = full_size.get(key)
        if known is None:
            trace.skipped += 1  # only partial or conditional answers: size unknown
            continue
        trace.add(time, client, key, known if size is None else max(size, known))
    if not len(trace):
        why = f"{trace.malformed} malformed line(s): " + "; ".join(trace.examples) if trace.examples else (
            f"{trace.skipped} line(s), none a GET/HEAD of a cached object answered 200/206/304"
            if trace.skipped else "the file is empty")
        raise TraceError(f"{path}: no request could be read ({why})")
    trace.sort_by_time()
    return trace


def _header_model(line: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(line[len(MAGIC):])
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _parse_line(kind: str, line: str) -> tuple[float, str, str, int | None, bool] | None:
    """(time, client, key, size, full response) of one line; None to skip it; _Malformed if unreadable."""
    if kind == "csv":
        return _parse_csv(line)
    if kind == "json":
        return _parse_json(line)
    return _parse_clf(line)


def _key(target: str, method: str = "GET") -> str | None:
    key = _canonical(target, method)
    if isinstance(key, urls.BadPath):
        raise _Malformed(f"bad path {target[:80]!r}: {key.reason}")
    return key


@functools.lru_cache(maxsize=1 << 18)
def _canonical(target: str, method: str) -> str | urls.BadPath | None:
    """The cache key of a request (memoised: traces repeat their objects), or the parse error."""
    try:
        key = cache_key(method, target)
    except urls.BadPath as exc:
        return exc
    return key.path if key is not None else None


def _parse_csv(line: str) -> tuple[float, str, str, int | None, bool] | None:
    parts = line.split(",")
    if len(parts) != 4:
        raise _Malformed(f"expected 4 comma-separated fields (time,client,object,size), got {len(parts)}")
    time_text, client, obj, size_text = (p.strip() for p in parts)
    try:
        time = float(time_text)
        size = int(size_text)
    except ValueError:
        raise _Malformed(f"time {time_text[:30]!r} or size {size_text[:30]!r} is not a number") from None
    if not math.isfinite(time) or size < 0:
        raise _Malformed(f"time must be finite and size >= 0, got {time_text!r}, {size_text!r}")
    if not client:
        raise _Malformed("empty client")
    key = _key(obj)
    if key is None:
        return None
    return time, client, key, size, True


def _parse_json(line: str) -> tuple[float, str, str, int | None, bool] | None:
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _Malformed(f"not JSON ({exc.msg})") from None
    except ValueError as exc:  # e.g. numbers too long to convert
        raise _Malformed(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise _Malformed("not a JSON object")
    try:
        stamp, method, path, status, size = doc["time"], doc["method"], doc["path"], doc["status"], doc["bytes"]
    except KeyError as exc:
        raise _Malformed(f"no {exc.args[0]!r} field") from None
    if not (isinstance(method, str) and isinstance(path, str) and isinstance(status, int)
            and isinstance(size, int) and size >= 0):
        raise _Malformed("method/path must be strings, status/bytes non-negative integers")
    time = _json_time(stamp)
    client = str(doc.get("peer") or "-")
    return _log_request(time, client, method, path, status, size)


def _json_time(stamp: object) -> float:
    if isinstance(stamp, int | float) and not isinstance(stamp, bool):
        return float(stamp)
    if isinstance(stamp, str):
        try:
            return dt.datetime.fromisoformat(stamp).timestamp()  # 3.11 reads a trailing Z
        except ValueError:
            pass
    raise _Malformed(f"time {str(stamp)[:40]!r} is neither ISO 8601 nor a number")


def _parse_clf(line: str) -> tuple[float, str, str, int | None, bool] | None:
    m = _CLF.fullmatch(line)
    if m is None:
        raise _Malformed("not a Common/Combined Log Format line")
    try:
        time = dt.datetime.strptime(m["time"], _CLF_TIME).timestamp()
    except ValueError:
        raise _Malformed(f"bad time [{m['time'][:40]}]") from None
    size = 0 if m["bytes"] == "-" else int(m["bytes"])
    return _log_request(time, m["host"], m["method"], m["target"], int(m["status"]), size)


def _log_request(time: float, client: str, method: str, target: str, status: int,
                 size: int) -> tuple[float, str, str, int | None, bool] | None:
    if method not in ("GET", "HEAD") or status not in _LOG_STATUSES:
        return None
    key = _key(target, method)
    if key is None:
        return None
    full = method == "GET" and status == 200
    return time, client, key, size, full


def model_with(model: TraceModel, **changes: Any) -> TraceModel:
    """``model`` with top-level or workload fields changed (by name)."""
    workload_fields = {f.name for f in fields(MusicWorkload)}
    w = {k: v for k, v in changes.items() if k in workload_fields}
    top = {k: v for k, v in changes.items() if k not in workload_fields}
    return replace(model, workload=replace(model.workload, **w), **top)
