"""The edge's token gate and manifest rewriting through real nodes: stand-in origin -> regional -> edge.

Every refusal reason of drm.tokens is provoked at the edge and must stop
there (nothing reaches upstream), answer short JSON without the token, and be
counted; valid tokens get manifests with the token carried into their gated
URIs, while the cached copies (and the regional's) stay token-free.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from servers import NodeProcess, node_process
from upstream_standin import KID, MASTER, MEDIA, key_service

from drm.tokens import issue
from edge.gates import CLAIMS_KEY
from edge.geo_gate import CLAIMS_KEY as GEO_CLAIMS_KEY

TRACK = "t1"
MASTER_PATH = f"/tracks/{TRACK}/master.m3u8"
MEDIA_PATH = f"/tracks/{TRACK}/hls-aes128/aac-96k/index.m3u8"
MPD_PATH = f"/tracks/{TRACK}/manifest.mpd"
SEGMENT_PATH = f"/tracks/{TRACK}/hls-aes128/aac-96k/seg-00001.m4s"
BURST = 3


@dataclass
class Env:
    key: Ed25519PrivateKey
    seen: list[dict[str, object]]
    regional: NodeProcess
    edge: NodeProcess

    def token(self, *, key: Ed25519PrivateKey | None = None, key_id: str = "k1", tracks: tuple[str, ...] = (TRACK,),
              session: str = "s-1", **kw: object) -> str:
        kw.setdefault("now", time.time())
        return issue(key or self.key, key_id, user="alice", session=session, tracks=tracks, **kw)  # type: ignore[arg-type]


def request(url: str, method: str = "GET", body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    host, _, rest = url.removeprefix("http://").partition("/")
    conn = http.client.HTTPConnection(host, timeout=30)
    try:
        conn.request(method, "/" + rest, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def metric(url: str, name: str, **labels: str) -> float:
    total = 0.0
    for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", request(url + "/metrics")[2].decode(), re.MULTILINE):
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def write_config(tmp: Path, name: str, upstream: str, extra: str = "") -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(f'name = "{name}"\nlisten = "127.0.0.1:0"\n'
                    f'[upstream]\npeers = ["{upstream}"]\ndeadline = 3.0\nhealth_interval = 0.2\n'
                    f'[cache]\ndir = "{tmp / name}"\nsize = 104857600\n[prefetch]\nsegments = 0\n{extra}')
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("token-gate")
    key = Ed25519PrivateKey.generate()
    pem = tmp / "k1.pub.pem"
    pem.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    tokens = f'[tokens]\npublic_keys = {{ k1 = "{pem}" }}\nrate_per_session = 0.5\nburst = {BURST}\nskew = 30\n'
    with contextlib.ExitStack() as stack:
        upstream, seen = stack.enter_context(key_service())
        regional = stack.enter_context(node_process("regional", "--config", str(write_config(tmp, "reg", upstream))))
        edge = stack.enter_context(node_process("edge", "--config",
                                                str(write_config(tmp, "edge", regional.url, tokens))))
        yield Env(key, seen, regional, edge)


def refused(env: Env, path: str, token: str | None, status: int, reason: str, method: str = "GET") -> None:
    """``path`` with ``token`` is refused at the edge with ``status``/``reason``; nothing goes upstream."""
    before = len(env.seen)
    counted = metric(env.edge.url, "legato_edge_refusals_total", gate="token", reason=reason)
    url = env.edge.url + path + ("" if token is None else f"?token={quote(token, safe='')}")
    got, headers, body = request(url, method, b'{"kids": []}' if method == "POST" else None,
                                 {"Content-Type": "application/json"} if method == "POST" else None)
    assert (got, json.loads(body)) == (status, {"error": reason}), (path, body)
    assert headers["Content-Type"] == "application/json" and headers["Cache-Control"] == "no-store"
    assert headers["Access-Control-Allow-Origin"] == "*"
    if status == 401:
        assert headers["WWW-Authenticate"].startswith("Bearer ")
    if token:
        assert token.encode() not in body and token not in "".join(headers.values())
    assert len(env.seen) == before, "a refused request reached upstream"
    assert metric(env.edge.url, "legato_edge_refusals_total", gate="token", reason=reason) == counted + 1


GATED = [MASTER_PATH, MEDIA_PATH, MPD_PATH, f"/keys/{KID}", "/license/clearkey"]


@pytest.mark.parametrize("path", GATED)
def test_missing_and_malformed(env: Env, path: str) -> None:
    method = "POST" if path == "/license/clearkey" else "GET"
    refused(env, path, None, 401, "missing", method)
    refused(env, path, "", 401, "missing", method)
    refused(env, path, "not-a-token", 401, "malformed", method)
    refused(env, path, "v1.k1.e30.AAAA", 401, "malformed", method)
    good = env.token(session="malformed-twice")
    got, _, body = request(f"{env.edge.url}{path}?token={good}&token={good}", method)
    assert (got, json.loads(body)) == (401, {"error": "malformed"})


def test_every_reason_of_a_bad_token(env: Env) -> None:
    now = time.time()
    other = Ed25519PrivateKey.generate()
    good = env.token()
    version, key_id, claims, sig = good.split(".")
    tampered = f"{version}.{key_id}.{claims[:10]}{'A' if claims[10] != 'A' else 'B'}{claims[11:]}.{sig}"
    cases = [
        (env.token(key=other), 401, "bad signature"),
        (tampered, 401, "bad signature"),
        (env.token(key_id="k9"), 401, "unknown signing key"),
        (env.token(now=now - 1000, ttl=300), 401, "expired"),
        (env.token(nbf=now + 600), 401, "not yet valid"),
        (env.token(tracks=("another-track",)), 403, "wrong track"),
        (env.token(bind_ip="10.1.2.3"), 403, "wrong address"),
    ]
    for token, status, reason in cases:
        for path in (MASTER_PATH, MEDIA_PATH, MPD_PATH):
            refused(env, path, token, status, reason)
        if reason != "wrong track":  # keys and licences name no track: origin checks kid ownership
            refused(env, f"/keys/{KID}", token, status, reason)
            refused(env, "/license/clearkey", token, status, reason, "POST")
    # within the skew, and bound to the address the edge sees: good
    for token in (env.token(now=now - 300 - 20, ttl=300), env.token(nbf=now + 20), env.token(bind_ip="127.0.0.1"),
                  env.token(tracks=("another-track", TRACK))):
        assert request(f"{env.edge.url}{MASTER_PATH}?token={token}")[0] == 200


def test_valid_token_reaches_the_key_service_with_the_token(env: Env) -> None:
    token = env.token(session="key-fetch")
    status, headers, body = request(f"{env.edge.url}/keys/{KID}?token={token}")
    assert status == 200 and len(body) == 16 and headers["Cache-Control"] == "no-store"
    assert env.seen[-1]["query"] == f"token={token}"
    status, _, body = request(f"{env.edge.url}/license/clearkey?token={token}", "POST", b'{"kids":["x"]}',
                              {"Content-Type": "application/json"})
    assert status == 200 and json.loads(body)["query"] == f"token={token}"


def test_key_requests_are_rate_limited_per_session(env: Env) -> None:
    token, other = env.token(session="greedy"), env.token(session="modest")
    answers = [request(f"{env.edge.url}/keys/{KID}?token={token}")[0] for _ in range(BURST)]
    assert answers == [200] * BURST
    refused(env, f"/keys/{KID}", token, 429, "rate limited")
    refused(env, "/license/clearkey", token, 429, "rate limited", "POST")
    status, headers, _ = request(f"{env.edge.url}/keys/{KID}?token={token}")
    assert status == 429 and headers["Retry-After"] == "2"  # 0.5 requests/s
    assert request(f"{env.edge.url}/keys/{KID}?token={other}")[0] == 200  # another session is not affected
    assert all(request(f"{env.edge.url}{MASTER_PATH}?token={token}")[0] == 200 for _ in range(BURST + 2))


def test_segments_are_not_gated_and_the_regional_never_is(env: Env) -> None:
    assert request(env.edge.url + SEGMENT_PATH)[0] == 200
    for path in (MASTER_PATH, MEDIA_PATH, MPD_PATH):
        assert request(env.regional.url + path)[0] == 200
    assert request(f"{env.regional.url}/keys/{KID}")[0] == 200  # the regional forwards; the key service decides


def test_manifests_carry_the_token_and_caches_stay_token_free(env: Env) -> None:
    token = env.token(session="rewrite")
    encoded = quote(token, safe="-._~")
    for _ in range(2):  # a miss (rewritten from the flight), then a hit (rewritten from the store)
        status, headers, body = request(f"{env.edge.url}{MASTER_PATH}?token={token}")
        assert status == 200 and headers["Cache-Control"] == "private, no-store"
        assert body == MASTER.replace(b"index.m3u8\n", f"index.m3u8?token={encoded}\n".encode())
        assert int(headers["Content-Length"]) == len(body) and "Last-Modified" not in headers
    assert headers["X-Cache"] == "HIT"
    status, headers, body = request(f"{env.edge.url}{MEDIA_PATH}?token={token}")
    assert body == MEDIA.replace(f"/keys/{KID}".encode(), f"/keys/{KID}?token={encoded}".encode())
    status, headers, body = request(f"{env.edge.url}{MPD_PATH}?token={token}")
    laurl = f"{env.edge.url}/license/clearkey?token={encoded}"
    assert f'<clearkey:Laurl Lic_type="EME-1.0">{laurl}</clearkey:Laurl>'.encode() in body
    assert body.count(b"token=") == 1
    # the stored copies are untouched: the regional's and, purged of nothing, the edge's own
    for path, original in ((MASTER_PATH, MASTER), (MEDIA_PATH, MEDIA)):
        status, headers, body = request(env.regional.url + path)
        assert (status, body) == (200, original) and b"token" not in body
    other = env.token(session="rewrite-2")
    body = request(f"{env.edge.url}{MASTER_PATH}?token={other}")[2]
    assert token.encode() not in body and other.encode() in body


def test_rewritten_manifest_conditionals_and_ranges(env: Env) -> None:
    token = env.token(session="ranges")
    url = f"{env.edge.url}{MASTER_PATH}?token={token}"
    status, headers, full = request(url)
    etag = headers["ETag"]
    assert etag != request(env.regional.url + MASTER_PATH)[1]["ETag"]
    assert request(url, headers={"If-None-Match": etag})[0] == 304
    status, headers, part = request(url, headers={"Range": "bytes=10-29"})
    assert status == 206 and part == full[10:30]
    assert headers["Content-Range"] == f"bytes 10-29/{len(full)}"
    status, headers, body = request(url, "HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == len(full)


def test_stored_gated_manifest_is_never_served_without_the_gate(env: Env) -> None:
    token = env.token(session="fast-path")
    assert request(f"{env.edge.url}{MASTER_PATH}?token={token}")[0] == 200
    for _ in range(3):  # stored and fresh: the sendfile fast path would answer 200 if it took it
        refused(env, MASTER_PATH, None, 401, "missing")


def test_token_never_logged_or_counted(env: Env) -> None:
    token = env.token(session="quiet")
    request(f"{env.edge.url}{MASTER_PATH}?token={token}")
    request(f"{env.edge.url}/keys/{KID}?token={token}x")
    assert token not in request(env.edge.url + "/metrics")[2].decode()
    assert token not in env.edge.stderr() and token not in env.regional.stderr()


def test_claims_key_is_the_licence_gates() -> None:
    assert CLAIMS_KEY is GEO_CLAIMS_KEY or CLAIMS_KEY == GEO_CLAIMS_KEY


def test_address_binding_behind_a_trusted_proxy(env: Env, tmp_path: Path) -> None:
    """Behind a trusted proxy the forwarded client address is the one a bound token is checked against."""
    pem = tmp_path / "k1.pub.pem"
    pem.write_bytes(env.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    bound = env.token(session="bound", bind_ip="81.2.69.160")
    with node_process("edge", "--listen", "127.0.0.1:0", "--upstream", env.regional.url, "--cache-dir",
                      str(tmp_path / "cache"), "--no-access-log", "--public-key", f"k1={pem}",
                      "--trusted-proxy", "127.0.0.0/8") as proxied, \
            node_process("edge", "--listen", "127.0.0.1:0", "--upstream", env.regional.url, "--cache-dir",
                         str(tmp_path / "cache2"), "--no-access-log", "--public-key", f"k1={pem}") as direct:
        url = f"{MASTER_PATH}?token={bound}"
        assert request(proxied.url + url, headers={"X-Forwarded-For": "81.2.69.160"})[0] == 200
        status, _, body = request(proxied.url + url, headers={"X-Forwarded-For": "89.160.20.112"})
        assert (status, json.loads(body)) == (403, {"error": "wrong address"})
        assert request(proxied.url + url)[0] == 403  # the proxy itself (127.0.0.1) is not the listener
        # an edge that trusts nobody ignores the header: a spoofed address changes nothing
        status, _, body = request(direct.url + url, headers={"X-Forwarded-For": "81.2.69.160"})
        assert (status, json.loads(body)) == (403, {"error": "wrong address"})
