"""Keys and licences through real cache nodes: forwarded with their query and body, never stored.

The upstream is upstream_standin's key service (a real HTTP server on
127.0.0.1), which marks its answers cacheable to prove the tiers store
nothing anyway, and records what reached it.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import NodeProcess, node_process
from upstream_standin import KEY, KID, key_service


@dataclass
class Chain:
    service: str
    seen: list[dict[str, object]]
    regional: NodeProcess
    edge: NodeProcess


def node_config(tmp: Path, name: str, upstream: str) -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(f'name = "{name}"\nlisten = "127.0.0.1:0"\naccess_log = false\n'
                    f'[upstream]\npeers = ["{upstream}"]\ndeadline = 2.0\nfirst_byte_timeout = 1.5\n'
                    f'read_timeout = 1.0\nhealth_interval = 0.2\n'
                    f'[cache]\ndir = "{tmp / name}"\nsize = 104857600\n[prefetch]\nsegments = 0\n')
    return path


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    tmp = tmp_path_factory.mktemp("forwarding")
    with contextlib.ExitStack() as stack:
        service, seen = stack.enter_context(key_service())
        regional = stack.enter_context(node_process("regional", "--config", str(node_config(tmp, "reg", service))))
        edge = stack.enter_context(node_process("edge", "--config", str(node_config(tmp, "edge", regional.url))))
        yield Chain(service, seen, regional, edge)


def request(url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None,
            chunked: bool = False) -> tuple[int, dict[str, str], bytes]:
    host, _, rest = url.removeprefix("http://").partition("/")
    conn = http.client.HTTPConnection(host, timeout=30)
    try:
        conn.request(method, "/" + rest, body=body, headers=headers or {}, encode_chunked=chunked)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def objects(node: NodeProcess) -> int:
    return json.loads(request(node.url + "/healthz")[2])["store"]["objects"]


@pytest.mark.parametrize("tier", ["regional", "edge"])
def test_key_is_forwarded_with_its_query_and_never_stored(chain: Chain, tier: str) -> None:
    node = getattr(chain, tier)
    query = "token=v1.k1.abc-_.sig&extra=%2B1"
    before = len(chain.seen)
    for _ in range(3):
        status, headers, body = request(f"{node.url}/keys/{KID}?{query}", headers={"Origin": "https://player"})
        assert (status, body) == (200, KEY)
        assert headers["Cache-Control"] == "no-store" and headers["X-Cache"] == "PASS"
        assert headers["Access-Control-Allow-Origin"] == "*"  # this node's CORS, not the upstream's
        assert headers["Via"].endswith(f"1.1 {tier if tier == 'edge' else 'reg'}")
    hits = chain.seen[before:]
    assert len(hits) == 3  # every request went all the way: nothing was stored on the way
    assert all(h["query"] == query and h["path"] == f"/keys/{KID}" for h in hits)
    assert hits[0]["xff"] == ("127.0.0.1, 127.0.0.1" if tier == "edge" else "127.0.0.1")
    assert objects(chain.edge) == 0 and objects(chain.regional) == 0
    status, _, body = request(f"{node.url}/keys/{KID}", "HEAD")
    assert status == 200 and body == b""


def test_licence_post_carries_body_and_content_type(chain: Chain) -> None:
    doc = json.dumps({"kids": ["ASNFZ4mrze8BI0VniavN7w"], "type": "temporary"}).encode()
    status, headers, body = request(chain.edge.url + "/license/clearkey?token=T0k", "POST", doc,
                                    {"Content-Type": "application/json"})
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"echo": doc.decode(), "query": "token=T0k"}
    assert chain.seen[-1]["ctype"] == "application/json" and chain.seen[-1]["method"] == "POST"
    assert objects(chain.edge) == 0 and objects(chain.regional) == 0


def test_licence_body_in_slow_pieces_arrives_whole(chain: Chain) -> None:
    """A body split over several TCP segments is forwarded whole (``read(n)`` returns what has arrived)."""
    doc = json.dumps({"kids": ["ASNFZ4mrze8BI0VniavN7w"], "type": "temporary"}).encode()

    def slowly() -> Iterator[bytes]:
        for i in range(0, len(doc), 16):
            time.sleep(0.05)
            yield doc[i:i + 16]

    status, _, body = request(chain.edge.url + "/license/clearkey?token=T0k", "POST", slowly(),  # type: ignore[arg-type]
                              {"Content-Type": "application/json", "Content-Length": str(len(doc))})
    assert status == 200 and json.loads(body)["echo"] == doc.decode()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_licence_body_over_4k_is_refused_at_the_edge(chain: Chain, chunked: bool) -> None:
    before = len(chain.seen)
    status, _, body = request(chain.edge.url + "/license/clearkey", "POST", b"{" + b" " * 5000 + b"}",
                              {"Content-Type": "application/json"}, chunked=chunked)
    assert status == 413 and b"4096" in body
    assert len(chain.seen) == before


def test_preflight_allows_the_licence_post(chain: Chain) -> None:
    status, headers, _ = request(chain.edge.url + "/license/clearkey?token=x", "OPTIONS", headers={
        "Origin": "https://player", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert status == 204
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in headers["Access-Control-Allow-Headers"]
    status, headers, _ = request(chain.edge.url + f"/keys/{KID}", "PUT", b"x")
    assert status == 405 and headers["Allow"] == "GET, HEAD, POST, OPTIONS"


@pytest.mark.parametrize(("kid", "status", "reason"), [
    ("401" + KID[3:], 401, b"expired"), ("429" + KID[3:], 429, b"rate limited")])
def test_refusals_of_the_key_service_pass_through(chain: Chain, kid: str, status: int, reason: bytes) -> None:
    got, headers, body = request(f"{chain.edge.url}/keys/{kid}?token=x")
    assert got == status and reason in body and headers["Cache-Control"] == "no-store"
    if status == 429:
        assert headers["Retry-After"] == "1"


@pytest.mark.parametrize(("kid", "status", "within"), [
    ("500" + KID[3:], 502, 2.0), ("bbbb" + KID[4:], 502, 2.0), ("dead" + KID[4:], 504, 5.0)])
def test_upstream_failures_are_quick_gateway_errors(chain: Chain, kid: str, status: int, within: float) -> None:
    t0 = time.monotonic()
    got, headers, body = request(f"{chain.regional.url}/keys/{kid}?token=secret-token-value")
    assert got == status, body
    assert time.monotonic() - t0 < within
    assert b"secret-token-value" not in body and headers["Cache-Control"] == "no-store"
    assert objects(chain.regional) == 0


def test_no_upstream_at_all_is_a_502(tmp_path: Path) -> None:
    with node_process("regional", "--config", str(node_config(tmp_path, "lonely", "http://127.0.0.1:9"))) as node:
        t0 = time.monotonic()
        status, _, body = request(f"{node.url}/keys/{KID}?token=secret-token-value")
        assert status == 502 and time.monotonic() - t0 < 3
        assert b"secret-token-value" not in body
        assert "secret-token-value" not in node.stderr()
