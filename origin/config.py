"""Origin node configuration (config/origin.toml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from drm.config import KeysConfig, TokensConfig
from geo.client import Networks, parse_networks
from legato.config import section, setting
from legato.http import parse_origins


@dataclass(frozen=True)
class CacheControl:
    segment_max_age: int = setting(31_536_000, "max-age (s) for init and media segments, sent with 'immutable'")
    manifest_max_age: int = setting(60, "max-age (s) for playlists, MPDs and track.json")
    license_max_age: int = setting(30, "max-age (s) for licence records")

    def __post_init__(self) -> None:
        for name in ("segment_max_age", "manifest_max_age", "license_max_age"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} {getattr(self, name)} is negative")


@dataclass(frozen=True)
class OriginConfig:
    store: Path = setting(Path("store"), "store directory written by `legato package` (serves STORE/tracks/...)")  # noqa: RUF009
    listen: str = setting("127.0.0.1:8080", "HOST:PORT to listen on (port 0 picks a free port)")
    workers: int = setting(1, "worker processes sharing the port with SO_REUSEPORT")
    access_log: bool = setting(True, "one JSON access-log line per request on stderr")
    cors_origin: str = setting("*", "Access-Control-Allow-Origin for browser players: '*', one origin, or a comma-separated list (reflected, with Vary: Origin)")
    cache_control: CacheControl = section(CacheControl, "Cache-Control lifetimes by object kind")  # noqa: RUF009
    shutdown_timeout: float = setting(10.0, "seconds to let in-flight responses finish after SIGTERM/SIGINT")
    memory_cache_mb: int = setting(256, "per-worker in-memory cache of small store files (MiB; 0 disables)")
    memory_object_max_kb: int = setting(4096, "files up to this size (KiB) are served from memory; larger are streamed")
    stream_chunk_kb: int = setting(256, "read size (KiB) when streaming large files")
    trusted_proxies: tuple[str, ...] = setting((), "CIDR networks (the cache tiers, a load balancer) whose X-Forwarded-For names the client, for address-bound tokens at the key service")
    keys: KeysConfig = section(KeysConfig, "the key store; with [keys] store set this origin also serves /keys/{kid} and /license/clearkey")  # noqa: RUF009
    tokens: TokensConfig = section(TokensConfig, "session tokens the key service accepts (public keys, skew, per-session rate)")  # noqa: RUF009

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= 256:
            raise ValueError(f"workers {self.workers} outside 1..256")
        if self.shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout {self.shutdown_timeout} is negative")
        for name in ("memory_cache_mb", "memory_object_max_kb"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} {getattr(self, name)} is negative")
        if self.stream_chunk_kb < 1:
            raise ValueError(f"stream_chunk_kb {self.stream_chunk_kb} must be at least 1")
        try:
            parse_origins(self.cors_origin)
        except ValueError as exc:
            raise ValueError(f"cors_origin {self.cors_origin!r}: {exc}") from None
        self.trusted_networks()
        if self.keys.store is not None:
            if not self.tokens.public_keys:
                raise ValueError("tokens.public_keys is empty but [keys] store turns the key service on: "
                                 "it could verify no token")
            store, keys = self.store.resolve(), self.keys.store.resolve()
            if keys == store or store in keys.parents:
                raise ValueError(f"keys.store {self.keys.store} is inside the served store {self.store}: "
                                 "the key store must live outside it")
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"listen {self.listen!r} is not HOST:PORT")

    def trusted_networks(self) -> Networks:
        try:
            return parse_networks(self.trusted_proxies)
        except ValueError as exc:
            raise ValueError(f"trusted_proxies {exc}") from None
