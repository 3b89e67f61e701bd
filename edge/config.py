"""Configuration of an edge node (config/edge.toml): the cache node's, plus the edge's gates.

``EdgeConfig`` is ``cache.config.NodeConfig`` with the sections only an edge
has; the regional keeps the plain ``NodeConfig`` (it is never gated).
"""

from __future__ import annotations

from dataclasses import dataclass

from cache.config import NodeConfig
from drm.config import TokensConfig
from geo.config import GeoConfig
from legato.config import section


@dataclass(frozen=True)
class EdgeConfig(NodeConfig):
    tokens: TokensConfig = section(TokensConfig, "session tokens checked on manifests, keys and licences "  # noqa: RUF009 - a default factory
                                   "(public keys only: an edge can verify tokens, never mint them)")
    geo: GeoConfig = section(GeoConfig, "client address behind proxies, country lookups and licence checks")  # noqa: RUF009 - a default factory
