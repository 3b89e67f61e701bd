"""Peer health: a circuit breaker per upstream peer, fed by active probes and
passive outcomes.  Pure state; ``now`` is always an argument.

States (per peer)::

    CLOSED --failure_threshold consecutive failures, or a refused connection--> OPEN
    OPEN   --open_seconds elapsed--> HALF_OPEN: requests may try it again
    HALF_OPEN --success--> CLOSED      HALF_OPEN --any failure--> OPEN

A refused connection opens the breaker at once: nothing listens there, and
waiting for three failures would cost three client retries.  A successful
active probe closes the breaker immediately (the peer is back), so a
restarted regional takes traffic again within one probe interval.  Half-open
admits every request rather than exactly one trial: the probe loop, not a
client, is the usual first contact, and a single-trial slot claimed by a
request that then goes elsewhere would wedge the peer half-open.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class Breaker:
    failure_threshold: int
    open_seconds: float
    failures: int = 0
    opened_at: float | None = None

    def state(self, now: float) -> State:
        if self.opened_at is None:
            return State.CLOSED
        return State.OPEN if now - self.opened_at < self.open_seconds else State.HALF_OPEN

    def available(self, now: float) -> bool:
        return self.state(now) is not State.OPEN

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None

    def failure(self, now: float, *, definitive: bool = False) -> None:
        self.failures += 1
        if definitive or self.opened_at is not None or self.failures >= self.failure_threshold:
            self.opened_at = now


@dataclass
class PeerSet:
    """Breakers and in-flight loads of all peers of one node."""

    peers: tuple[str, ...]
    failure_threshold: int
    open_seconds: float
    breakers: dict[str, Breaker] = field(default_factory=dict)
    loads: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for p in self.peers:
            self.breakers[p] = Breaker(self.failure_threshold, self.open_seconds)
            self.loads[p] = 0
