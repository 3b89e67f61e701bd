"""Configuration of a cache node (regional or edge): config/regional.toml, config/edge.toml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from legato.config import section, setting
from legato.http import parse_origins


@dataclass(frozen=True)
class UpstreamConfig:
    peers: tuple[str, ...] = setting((), "upstream base URLs; objects are spread over them by consistent hashing")
    load_epsilon: float = setting(0.25, "bounded loads: a peer takes at most (1+epsilon) x the mean in-flight load")
    connect_timeout: float = setting(1.0, "seconds to open a connection to a peer")
    first_byte_timeout: float = setting(3.0, "seconds from request to response headers from a peer")
    read_timeout: float = setting(3.0, "seconds a peer may stall mid-body before it counts as failed")
    deadline: float = setting(8.0, "seconds a client request may spend on upstream attempts, retries included")
    health_interval: float = setting(0.25, "seconds between active /healthz probes of each peer")
    health_timeout: float = setting(0.5, "seconds a /healthz probe may take")
    failure_threshold: int = setting(3, "consecutive failures that open a peer's circuit breaker")
    open_seconds: float = setting(2.0, "seconds a breaker stays open before one trial request (half-open)")
    connections_per_peer: int = setting(256, "connection pool size per peer")

    def __post_init__(self) -> None:
        for peer in self.peers:
            if not peer.startswith(("http://", "https://")):
                raise ValueError(f"peer {peer!r} is not an http(s) URL")
        if self.load_epsilon <= 0:
            raise ValueError("load_epsilon must be positive")
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")


@dataclass(frozen=True)
class CacheSettings:
    dir: Path = setting(Path("cache"), "cache directory on SSD (objects, index, locks)")  # noqa: RUF009
    size: int = setting(10 << 30, "bytes of objects the disk tier may hold")
    ram: int = setting(256 << 20, "bytes of the hottest small objects (up to 64 KiB each) kept in RAM per worker (0: off)")
    policy: str = setting("listen", "eviction policy by name: lru, lfu, sieve, s3fifo, listen")
    max_waiters: int = setting(10_000, "requests that may wait on one in-flight fetch before 503s")
    stale_if_error: int = setting(86_400, "seconds a stale object may be served when upstream fails "
                                  "(when the response does not say; RFC 5861)")
    hit_interval: float = setting(1.0, "seconds within which further hits on one object are not reported to the "
                                  "eviction policy, per worker (Varnish's lru_interval; 0: every hit)")

    def __post_init__(self) -> None:
        if self.size <= 0 or self.ram < 0:
            raise ValueError("cache sizes must be positive")
        if self.hit_interval < 0:
            raise ValueError("hit_interval must be >= 0 seconds")


@dataclass(frozen=True)
class PrefetchConfig:
    segments: int = setting(2, "segments after the requested one fetched in the background (0: off)")
    concurrency: int = setting(4, "background prefetches in flight per worker")
    max_client_misses: int = setting(0, "a prefetch starts its upstream fetch only while at most this many client "
                                     "misses (requests waiting on upstream) are in flight on the worker; "
                                     "prefetches already running go on (0: only while none are)")
    max_wait: float = setting(10.0, "seconds a scheduled prefetch may wait to start (for client misses to end or a "
                              "free slot) before it is dropped and counted as skipped")
    unused_after: float = setting(300.0, "seconds a prefetched segment may go unrequested on its worker before "
                                  "its bytes count as wasted")

    def __post_init__(self) -> None:
        if self.segments < 0 or self.concurrency < 1:
            raise ValueError("prefetch.segments must be >= 0 and prefetch.concurrency >= 1")
        if self.max_client_misses < 0:
            raise ValueError("prefetch.max_client_misses must be >= 0")
        if not self.max_wait > 0:
            raise ValueError("prefetch.max_wait must be > 0 seconds")
        if not self.unused_after > 0:
            raise ValueError("prefetch.unused_after must be > 0 seconds")


@dataclass(frozen=True)
class NodeConfig:
    name: str = setting("node-1", "this node's name, sent in Via")
    listen: str = setting("127.0.0.1:8090", "HOST:PORT to listen on (port 0 picks a free port)")
    workers: int = setting(1, "worker processes sharing the port with SO_REUSEPORT")
    access_log: bool = setting(True, "one JSON access-log line per request on stderr")
    cors_origin: str = setting("*", "Access-Control-Allow-Origin: '*', one origin, or a comma-separated list")
    admin_token: str = setting("", "bearer token for POST /admin/purge (empty: purge disabled)")
    shutdown_timeout: float = setting(10.0, "seconds in-flight transfers get after SIGTERM/SIGINT")
    upstream: UpstreamConfig = section(UpstreamConfig, "where misses are fetched from")  # noqa: RUF009 - a default factory
    cache: CacheSettings = section(CacheSettings, "the object store")  # noqa: RUF009 - a default factory
    prefetch: PrefetchConfig = section(PrefetchConfig, "background fetching of the next segments")  # noqa: RUF009 - a default factory

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= 256:
            raise ValueError(f"workers {self.workers} outside 1..256")
        parse_origins(self.cors_origin)
