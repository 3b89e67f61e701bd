"""A node's ``/metrics`` (Prometheus text exposition) read by value in tests.

``iter_samples(text, name)`` yields the labels and value of each sample of metric
``name`` in exposition ``text``; ``metric_sum(text, name, **labels)`` sums the
samples whose labels include ``labels`` (0.0 when none does).  ``metric(url,
name, **labels)`` is that sum over ``URL/metrics`` fetched with ``servers.get`` and
``session_metric(session, base, name, **labels)`` the same through an aiohttp
client session.

Import as ``from metrics_text import metric`` (tests/ is on sys.path through
the root conftest).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from servers import get

if TYPE_CHECKING:
    import aiohttp

SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
"""A sample line: metric name, optional ``{labels}``, value."""
LABEL = re.compile(r'(\w+)="([^"]*)"')
"""One ``name="value"`` pair inside a sample's braces."""


def iter_samples(text: str, name: str) -> Iterator[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of metric ``name`` in the exposition ``text``, in order."""
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1) == name:
            yield dict(LABEL.findall(m.group(2) or "")), float(m.group(3))


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of metric ``name`` in ``text`` whose labels include ``labels``."""
    total = 0.0
    for found, value in iter_samples(text, name):
        if all(found.get(k) == v for k, v in labels.items()):
            total += value
    return total


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus metric's samples at ``url``'s /metrics whose labels include ``labels``."""
    return metric_sum(get(url + "/metrics")[2].decode(), name, **labels)


async def session_metric(session: aiohttp.ClientSession, base: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus metric's samples at ``base``'s /metrics whose labels include ``labels``, read
    through ``session``."""
    async with session.get(base + "/metrics") as resp:
        text = await resp.text()
    return metric_sum(text, name, **labels)
