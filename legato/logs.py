"""Per-request observation for every node: the access log and request metrics.

aiohttp calls an access logger once per finished response, with the elapsed
time; that is our "logging phase".  ``access_logger_class(observers)`` turns
it into an ``AccessRecord`` (a plain value) and hands it to each observer:

* ``JsonAccessLog`` writes one JSON line per request to stderr (switchable by
  config).  The path is logged *without* its query string: session tokens
  will ride there, and secrets never go to logs.
* ``RequestMetrics`` counts requests by route kind and status, bytes sent and
  latency, with prometheus-client.  ``render_metrics`` serves them, merging
  all workers when ``PROMETHEUS_MULTIPROC_DIR`` is set (``legato.server`` sets
  it for ``--workers`` > 1).

prometheus_client is imported lazily, inside ``RequestMetrics`` and
``render_metrics``: it picks its storage (in-process or multiprocess files)
when first imported, so it must not be imported before the server has decided
on the multiprocess directory.

Also here: ``configure_logging`` (plain one-line stderr logging, and client
protocol errors such as oversized headers logged as one line, not a
traceback).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TextIO

from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import BaseRequest, StreamResponse

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

try:
    from aiohttp.web import RequestKey
except ImportError:  # aiohttp < 3.13 has no typed request keys
    KIND_KEY: Any = "legato.kind"
    START_KEY: Any = "legato.start"
else:
    KIND_KEY = RequestKey("kind", str)
    START_KEY = RequestKey("start", float)
"""Request-storage keys where a handler records the route kind (a metrics
label) and when handling began (see ``begin``)."""

UNROUTED = "unrouted"
"""Kind label for requests that matched nothing (bad request, 404, parse error)."""


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """What one request did, as logged and counted."""

    time: float  # Unix time when the response finished (ISO 8601 in the JSON line)
    peer: str | None
    method: str
    path: str  # raw path, query string removed
    status: int
    bytes: int  # bytes written for the response, headers included (nginx's $bytes_sent)
    duration_ms: float
    user_agent: str | None
    range: str | None
    kind: str


Observer = Callable[[AccessRecord], None]


def iso_time(timestamp: float) -> str:
    """ISO 8601 UTC with milliseconds: 2026-11-22T04:09:49.123Z."""
    whole = int(timestamp)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((timestamp - whole) * 1000):03d}Z"


def path_without_query(raw_target: str) -> str:
    """The request-target with query and fragment cut off (tokens ride in the query)."""
    for sep in ("?", "#"):
        raw_target = raw_target.partition(sep)[0]
    return raw_target


def begin(request: BaseRequest, kind: str = UNROUTED) -> None:
    """Mark the start of handling: a precise clock (uvloop's loop.time(), which
    aiohttp uses for access-log timing, ticks in whole milliseconds) and the
    route kind until the handler knows better."""
    request[START_KEY] = time.perf_counter()
    request[KIND_KEY] = kind


def make_record(request: BaseRequest, response: StreamResponse, elapsed: float, now: float) -> AccessRecord:
    """Build the record of a finished request.

    ``elapsed`` is aiohttp's measure, used when the handler did not call
    ``begin`` (e.g. aiohttp's own 400 for an unparseable request).
    """
    headers = request.headers
    start = request.get(START_KEY)
    if start is not None:
        elapsed = time.perf_counter() - start
    return AccessRecord(
        time=now,
        peer=request.remote,
        method=request.method,
        path=path_without_query(request.raw_path),
        status=response.status,
        bytes=response.body_length,
        duration_ms=round(elapsed * 1000, 3),
        user_agent=headers.get("User-Agent"),
        range=headers.get("Range"),
        kind=str(request.get(KIND_KEY, UNROUTED)),
    )


_LOGGED_FIELDS = tuple(f.name for f in fields(AccessRecord) if f.name != "kind")


def format_record(record: AccessRecord) -> str:
    """One JSON line (no kind: it is a metrics label, the path already says it).

    Fields are read one by one: ``dataclasses.asdict`` deep-copies every value
    and cost ~30 µs more per request.
    """
    line: dict[str, Any] = {name: getattr(record, name) for name in _LOGGED_FIELDS}
    line["time"] = iso_time(record.time)
    return json.dumps(line, separators=(",", ":"), ensure_ascii=True)


class JsonAccessLog:
    """Observer writing one JSON line per request to a stream (stderr by default)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def __call__(self, record: AccessRecord) -> None:
        stream = self.stream or sys.stderr
        stream.write(format_record(record) + "\n")


def access_logger_class(observers: Sequence[Observer], clock: Callable[[], float] = time.time) -> type[AbstractAccessLogger]:
    """An aiohttp access-logger class feeding every finished request to ``observers``.

    aiohttp instantiates the class itself (with a logger and a format we do
    not use), hence a class made per server rather than an instance.
    """
    observers = tuple(observers)

    class _Observe(AbstractAccessLogger):
        def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
            record = make_record(request, response, time, clock())
            for observe in observers:
                try:
                    observe(record)
                except Exception:  # an observer must never break serving
                    logging.getLogger("legato.access").exception("access observer failed")

    return _Observe


LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestMetrics:
    """Observer counting requests, bytes and latency in a Prometheus registry.

    Metrics (``node`` is the role, e.g. "origin"):
    ``legato_http_requests_total{node,kind,status}``,
    ``legato_http_response_bytes_total{node,kind}``,
    ``legato_http_request_duration_seconds{node,kind}`` (histogram).
    """

    def __init__(self, node: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "legato_http_requests", "HTTP requests answered, by route kind and status",
            ("node", "kind", "status"), registry=self.registry,
        )
        self.bytes = Counter(
            "legato_http_response_bytes", "Bytes written in responses (headers included), by route kind",
            ("node", "kind"), registry=self.registry,
        )
        self.latency = Histogram(
            "legato_http_request_duration_seconds", "Time from request parsed to response written, by route kind",
            ("node", "kind"), buckets=LATENCY_BUCKETS, registry=self.registry,
        )

        # labelled children, cached: .labels() costs a lock and a lookup
        self._children: dict[tuple[str, int], tuple[Any, Any, Any]] = {}

    def __call__(self, record: AccessRecord) -> None:
        key = (record.kind, record.status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(self.node, record.kind, str(record.status)),
                self.bytes.labels(self.node, record.kind),
                self.latency.labels(self.node, record.kind),
            )
        requests, sent, latency = children
        requests.inc()
        sent.inc(record.bytes)
        latency.observe(record.duration_ms / 1000)


def render_metrics(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry``, or of all workers' files."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return generate_latest(merged)
    return generate_latest(registry)


class _ClientErrorFilter(logging.Filter):
    """Log aiohttp's reports of malformed requests as one line, without traceback.

    A client sending oversized headers or a bad request line is the client's
    problem: aiohttp answers it with a 400 and logs the exception; we keep the
    line (at INFO) and drop the traceback.  Handler exceptions keep theirs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc.message!s}".replace("\n", " ")[:300]
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def configure_logging(level: int = logging.INFO) -> None:
    """One-line stderr logging for a node process (idempotent)."""
    root = logging.getLogger()
    if not any(getattr(h, "_legato", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._legato = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _ClientErrorFilter) for f in server_log.filters):
        server_log.addFilter(_ClientErrorFilter())
