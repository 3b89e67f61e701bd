"""Origin node configuration (config/origin.toml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from legato.config import section, setting


@dataclass(frozen=True)
class CacheControl:
    segment_max_age: int = setting(31_536_000, "max-age (s) for init and media segments, sent with 'immutable'")
    manifest_max_age: int = setting(60, "max-age (s) for playlists, MPDs and track.json")
    license_max_age: int = setting(30, "max-age (s) for licence records")


@dataclass(frozen=True)
class OriginConfig:
    store: Path = setting(Path("store"), "store directory written by `legato package` (serves STORE/tracks/...)")
    listen: str = setting("127.0.0.1:8080", "HOST:PORT to listen on (port 0 picks a free port)")
    workers: int = setting(1, "worker processes sharing the port with SO_REUSEPORT")
    access_log: bool = setting(True, "one JSON access-log line per request on stderr")
    cors_origin: str = setting("*", "Access-Control-Allow-Origin sent to browser players")
    cache_control: CacheControl = section(CacheControl, "Cache-Control lifetimes by object kind")

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= 256:
            raise ValueError(f"workers {self.workers} outside 1..256")
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"listen {self.listen!r} is not HOST:PORT")
