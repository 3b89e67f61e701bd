"""The edge node's app: the cache engine (cache.node) with the edge's gates and rewriter installed.

``create_app(config)`` builds the engine for role "edge" and installs, in
the order they run:

1. the token gate (edge.token_gate), when ``[tokens]`` names public keys:
   401/403/429 before anything else is spent on a request;
2. the licence gate (edge.geo_gate), when ``[geo] database`` is set: 451
   outside the licensed territories and windows;

and the manifest rewriter that carries a request's token into the
manifest (edge.token_gate.TokenRewriter).  A SIGHUP reload installs them
again from the new config: new public keys or a changed rate take effect
without a restart; the refusal metrics, the rate limiter's buckets (while
rate and burst stay the same) and the open country database survive.  The
regional runs the plain engine: it is never gated.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from cache import node as engine
from drm.config import load_public_keys
from edge.config import EdgeConfig
from edge.gates import EdgeMetrics, Gate, Node, Rewriter, client_address
from edge.token_gate import TokenGate, TokenRewriter
from legato.config import ConfigError

if TYPE_CHECKING:
    from drm.ratelimit import RateLimiter
    from edge.geo_gate import GeoGate

log = logging.getLogger("legato.edge")


class EdgeHooks:
    """What the edge installs into its node, and keeps across reloads."""

    def __init__(self) -> None:
        self.metrics: EdgeMetrics | None = None
        self._limiter: tuple[tuple[float, int, int], RateLimiter] | None = None
        self.geo: GeoGate | None = None

    def limiter(self, config: EdgeConfig) -> RateLimiter:
        from drm.ratelimit import RateLimiter

        t = config.tokens
        shape = (t.rate_per_session, t.burst, t.rate_sessions)
        if self._limiter is None or self._limiter[0] != shape:
            self._limiter = (shape, RateLimiter(t.rate_per_session, t.burst, max_keys=t.rate_sessions))
        return self._limiter[1]

    def geo_gate(self, node: Node, config: EdgeConfig) -> GeoGate | None:
        from edge.geo_gate import GeoGate

        if not config.geo.enabled:
            if self.geo is not None:
                self.geo.close()
            self.geo = None
        elif self.geo is None:
            self.geo = GeoGate.from_config(config.geo, registry=node.registry, node_name=config.name,
                                           clock=node.clock)
        else:
            self.geo.reconfigure(config.geo)
        return self.geo

    def build_gates(self, node: Node, config: EdgeConfig) -> list[Gate]:
        """The gates, in the order they run (see the module docstring)."""
        assert self.metrics is not None
        gates: list[Gate] = []
        public_keys = load_public_keys(config.tokens)
        if public_keys:
            networks = config.geo.networks()
            client_ip = functools.partial(client_address, trusted=networks, header=config.geo.proxy_header.lower())
            gates.append(TokenGate(public_keys, skew=config.tokens.skew, required=config.tokens.required,
                                   limiter=self.limiter(config), metrics=self.metrics, client_ip=client_ip))
        else:
            log.warning("no [tokens] public_keys (or --public-key): manifests are served without token checks; "
                        "the key service still refuses key requests without a valid token")
        geo = self.geo_gate(node, config)
        if geo is not None:
            gates.append(geo)
        return gates

    def rewriters(self, config: EdgeConfig) -> list[Rewriter]:
        return [TokenRewriter()]

    def configure(self, node: Node, config: engine.NodeConfig) -> None:
        """Install the hooks for ``config``; ConfigError (the running hooks stay) when it cannot be."""
        from geo.country import GeoDBError

        assert isinstance(config, EdgeConfig)
        if self.metrics is None:
            self.metrics = EdgeMetrics(node.registry)
        try:
            gates = self.build_gates(node, config)
        except (GeoDBError, ValueError) as exc:
            raise ConfigError(f"geo: {exc}") from None
        node.install(gates, self.rewriters(config))


def create_app(config: EdgeConfig, *, load_config: Callable[[], EdgeConfig] | None = None,
               clock: Callable[[], float] = time.time) -> web.Application:
    """The edge's aiohttp app; ``load_config`` re-reads the config on SIGHUP."""
    hooks = EdgeHooks()
    app = engine.create_app(config, role="edge", clock=clock, load_config=load_config, configure=hooks.configure)

    async def close_geo(_app: web.Application) -> None:
        if hooks.geo is not None:
            hooks.geo.close()

    app.on_cleanup.append(close_geo)
    return app
