"""The origin's key and licence service (origin/keyservice.py) on real sockets.

In-process apps (a controllable clock) for the protocol and every refusal;
a real `legato origin` process for start-up checks and for what reaches its
stderr (never a token or a key).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from servers import origin_process

from drm.clearkey import request_body
from drm.config import KeysConfig, TokensConfig
from drm.keys import ContentKey, KeyStore, new_content_key
from drm.tokens import b64url_encode, issue
from legato.config import ConfigError, build
from legato.server import bind_socket, runner_kwargs
from origin.app import create_app
from origin.config import OriginConfig

NOW = 1_800_000_000.0
MASTER = os.urandom(32)
SIGNER = Ed25519PrivateKey.generate()
STRANGER = Ed25519PrivateKey.generate()
SUNRISE, SUNRISE_FLAC, DUSK = new_content_key(), new_content_key(), new_content_key()
LICENSE = "/license/clearkey"


def key_path(key: ContentKey) -> str:
    return f"/keys/{key.kid_hex}"


@dataclass
class Setup:
    store: Path
    keystore: Path
    master_file: Path
    public_file: Path

    def config(self, **kw: Any) -> OriginConfig:
        tokens = {"public_keys": {"k1": self.public_file}, "rate_per_session": 1.0, "burst": 5}
        tokens.update(kw.pop("tokens", {}))
        return OriginConfig(store=self.store, access_log=False,
                            keys=KeysConfig(store=self.keystore, master_key_file=self.master_file),
                            tokens=TokensConfig(**tokens), **kw)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    store = tmp_path / "store"
    (store / "tracks" / "sunrise").mkdir(parents=True)
    (store / "tracks" / "sunrise" / "master.m3u8").write_bytes(b"#EXTM3U\n")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    master_file = secrets / "master.key"
    master_file.write_text(base64.b64encode(MASTER).decode())
    public_file = secrets / "k1.pub.pem"
    public_file.write_bytes(SIGNER.public_key().public_bytes(serialization.Encoding.PEM,
                                                             serialization.PublicFormat.SubjectPublicKeyInfo))
    keystore = secrets / "keys.sqlite"
    with KeyStore.open(keystore, MASTER) as ks:
        ks.put("sunrise", SUNRISE)
        ks.put("sunrise", SUNRISE_FLAC, "flac")
        ks.put("dusk", DUSK)
    return Setup(store, keystore, master_file, public_file)


def token(tracks: tuple[str, ...] = ("sunrise",), *, session: str = "s1", key: Ed25519PrivateKey = SIGNER,
          key_id: str = "k1", now: float = NOW, **kw: Any) -> str:
    return issue(key, key_id, user="alice", session=session, tracks=tracks, now=now, **kw)


@dataclass
class Clock:
    now: float = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class Served:
    url: str
    clock: Clock
    http: aiohttp.ClientSession
    app: web.Application = field(repr=False)

    async def get(self, path: str, tok: str | None = None, method: str = "GET", **kw: Any) -> tuple[int, dict, bytes]:
        params = {"token": tok} if tok is not None else None
        async with self.http.request(method, self.url + path, params=params, **kw) as resp:
            return resp.status, dict(resp.headers), await resp.read()

    async def license(self, body: bytes, tok: str | None = None, **kw: Any) -> tuple[int, dict, bytes]:
        kw.setdefault("headers", {"Content-Type": "application/json"})
        return await self.get(LICENSE, tok, "POST", data=body, **kw)


async def serve(config: OriginConfig) -> tuple[web.AppRunner, str, Clock, web.Application]:
    clock = Clock()
    app = create_app(config, clock=clock)
    runner = web.AppRunner(app, **runner_kwargs(app, access_log=False, shutdown_timeout=1))
    await runner.setup()
    sock = bind_socket("127.0.0.1", 0, reuse_port=False)
    await web.SockSite(runner, sock).start()
    return runner, f"http://127.0.0.1:{sock.getsockname()[1]}", clock, app


@pytest.fixture
async def served(setup: Setup) -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(**kw: Any) -> Served:
        runner, url, clock, app = await serve(setup.config(**kw))
        runners.append(runner)
        sessions.append(aiohttp.ClientSession())
        return Served(url, clock, sessions[-1], app)

    yield start
    for s in sessions:
        await s.close()
    for r in runners:
        await r.cleanup()


def error_of(body: bytes) -> str:
    data = json.loads(body)
    assert set(data) == {"error"}
    return data["error"]


# ---------------------------------------------------------------- keys


async def test_key_for_a_valid_token(served: Callable[..., Any]) -> None:
    origin = await served()
    status, headers, body = await origin.get(key_path(SUNRISE), token())
    assert status == 200 and body == SUNRISE.key
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Access-Control-Allow-Origin"] == "*"
    status, headers, body = await origin.get(key_path(SUNRISE_FLAC), token(("dusk", "sunrise")), "HEAD")
    assert status == 200 and body == b"" and headers["Content-Length"] == "16"


@pytest.mark.parametrize(("make", "status", "reason"), [
    (lambda: None, 401, "missing"),
    (lambda: "", 401, "missing"),
    (lambda: "v1.k1.garbage", 401, "malformed"),
    (lambda: token()[:-2] + ("AA" if token()[-2:] != "AA" else "BA"), 401, "bad signature"),
    (lambda: token(key=STRANGER), 401, "bad signature"),
    (lambda: token(key=STRANGER, key_id="k9"), 401, "unknown signing key"),
    (lambda: token(now=NOW - 400), 401, "expired"),
    (lambda: token(nbf=NOW + 100), 401, "not yet valid"),
    (lambda: token(("dusk",)), 403, "wrong track"),
    (lambda: token(bind_ip="192.0.2.1"), 403, "wrong address"),
])
async def test_key_refusals(served: Callable[..., Any], make: Callable[[], str | None], status: int,
                            reason: str) -> None:
    origin = await served()
    got, headers, body = await origin.get(key_path(SUNRISE), make())
    assert (got, error_of(body)) == (status, reason)
    assert headers["Content-Type"] == "application/json" and headers["Cache-Control"] == "no-store"
    assert headers["Access-Control-Allow-Origin"] == "*"
    if status == 401:
        assert headers["WWW-Authenticate"].startswith('Bearer realm="legato"')
    assert SUNRISE.key not in body


async def test_unknown_kid_other_track_and_methods(served: Callable[..., Any]) -> None:
    origin = await served()
    status, _, body = await origin.get(f"/keys/{os.urandom(16).hex()}", token())
    assert (status, error_of(body)) == (404, "unknown key")
    status, _, body = await origin.get(key_path(DUSK), token())
    assert (status, error_of(body)) == (403, "wrong track")
    status, headers, body = await origin.get(key_path(SUNRISE), token(), "POST", data=b"x")
    assert (status, error_of(body), headers["Allow"]) == (405, "method not allowed", "GET, HEAD, OPTIONS")
    status, _, _ = await origin.get("/keys/NOT-A-KID", token())  # outside the URL space
    assert status == 404
    url = f"{origin.url}{key_path(SUNRISE)}?token={token()}&token={token()}"
    async with origin.http.get(url) as resp:
        assert (resp.status, error_of(await resp.read())) == (401, "malformed")


async def test_a_bound_token_through_trusted_tiers(served: Callable[..., Any]) -> None:
    bound = token(bind_ip="203.0.113.5")
    forwarded = {"X-Forwarded-For": "203.0.113.5, 127.0.0.1"}
    direct = await served()  # no trusted proxies: the socket peer (127.0.0.1) is the client
    status, _, body = await direct.get(key_path(SUNRISE), bound, headers=forwarded)
    assert (status, error_of(body)) == (403, "wrong address")
    tiers = await served(trusted_proxies=("127.0.0.0/8",))
    status, _, body = await tiers.get(key_path(SUNRISE), bound, headers=forwarded)
    assert (status, body) == (200, SUNRISE.key)
    status, _, body = await tiers.get(key_path(SUNRISE), bound, headers={"X-Forwarded-For": "198.51.100.1"})
    assert (status, error_of(body)) == (403, "wrong address")
    status, _, body = await tiers.get(key_path(SUNRISE), token(bind_ip="127.0.0.1"))
    assert status == 200


async def test_rate_limit_per_session(served: Callable[..., Any]) -> None:
    origin = await served(tokens={"rate_per_session": 0.5, "burst": 3})
    t1, t2 = token(session="one"), token(session="two")
    for _ in range(3):
        assert (await origin.get(key_path(SUNRISE), t1))[0] == 200
    status, headers, body = await origin.get(key_path(SUNRISE), t1)
    assert (status, error_of(body), headers["Retry-After"]) == (429, "rate limited", "2")
    assert "Retry-After" in headers["Access-Control-Expose-Headers"]
    assert (await origin.license(request_body([SUNRISE.kid]), t1))[0] == 429  # licences share the bucket
    assert (await origin.get(key_path(SUNRISE), t2))[0] == 200  # another session
    origin.clock.now += 2
    assert (await origin.get(key_path(SUNRISE), t1))[0] == 200
    assert (await origin.get(key_path(SUNRISE), t1))[0] == 429
    status, _, _ = await origin.get(key_path(SUNRISE), "v1.k1.garbage")
    assert status == 401  # a bad token never reaches (or drains) a bucket


# ---------------------------------------------------------------- licences


async def test_clearkey_licence(served: Callable[..., Any]) -> None:
    origin = await served()
    status, headers, body = await origin.license(request_body([SUNRISE.kid, SUNRISE_FLAC.kid, DUSK.kid]), token())
    assert status == 200
    assert headers["Content-Type"] == "application/json" and headers["Cache-Control"] == "no-store"
    licence = json.loads(body)
    assert licence["type"] == "temporary"
    assert licence["keys"] == [
        {"kty": "oct", "kid": b64url_encode(SUNRISE.kid), "k": b64url_encode(SUNRISE.key)},
        {"kty": "oct", "kid": b64url_encode(SUNRISE_FLAC.kid), "k": b64url_encode(SUNRISE_FLAC.key)},
    ]  # only what the token entitles: not dusk's key
    assert b64url_encode(DUSK.key) not in body.decode()
    assert "=" not in body.decode()  # base64url without padding


async def test_clearkey_licence_lenient_inputs(served: Callable[..., Any]) -> None:
    origin = await served()
    padded = json.dumps({"kids": [base64.urlsafe_b64encode(SUNRISE.kid).decode()]}).encode()  # padding, no type
    for headers in ({}, {"Content-Type": "text/plain;charset=UTF-8"}, {"Content-Type": "application/octet-stream"},
                    {"Content-Type": "application/x-www-form-urlencoded"}):  # what `curl -d` sends
        status, _, body = await origin.license(padded, token(session=f"s{len(headers)}"), headers=headers)
        assert status == 200, body
        assert json.loads(body)["keys"][0]["k"] == b64url_encode(SUNRISE.key)


async def test_a_licence_request_in_slow_pieces(served: Callable[..., Any]) -> None:
    body = request_body([SUNRISE.kid])
    origin = await served()

    async def slowly() -> AsyncIterator[bytes]:  # each piece its own TCP segment
        for i in range(0, len(body), 10):
            await asyncio.sleep(0.02)
            yield body[i:i + 10]

    status, _, answer = await origin.get(LICENSE, token(), "POST", data=slowly(),
                                         headers={"Content-Type": "application/json"})
    assert status == 200, answer
    assert json.loads(answer)["keys"][0]["k"] == b64url_encode(SUNRISE.key)


@pytest.mark.parametrize(("body", "reason"), [
    (b"", "body is not JSON"),
    (b"{not json", "body is not JSON"),
    (b"\xff\xfe", "body is not JSON"),
    (b"[]", "body is not a JSON object"),
    (b'{"kids": "abc"}', "'kids' must be a non-empty array"),
    (b'{"kids": []}', "'kids' must be a non-empty array"),
    (b'{"kids": [5]}', "kids must be base64url strings"),
    (b'{"kids": ["!!"]}', "a kid is not base64url"),
    (b'{"kids": ["AAAA"]}', "a kid is 16 bytes, got 3"),
    (b'{"kids": ["' + b64url_encode(SUNRISE.kid).encode() + b'"], "type": "persistent-license"}',
     "only 'temporary' licences are issued"),
    (json.dumps({"kids": [b64url_encode(os.urandom(16))] * 65}).encode(), "more than 64 kids"),
])
async def test_bad_licence_requests(served: Callable[..., Any], body: bytes, reason: str) -> None:
    origin = await served(tokens={"burst": 100})
    status, _, answer = await origin.license(body, token())
    assert (status, error_of(answer)) == (400, f"bad licence request: {reason}")


async def test_licence_refusals(served: Callable[..., Any]) -> None:
    origin = await served(tokens={"burst": 100})
    status, _, body = await origin.license(request_body([DUSK.kid]), token())
    assert (status, error_of(body)) == (403, "wrong track")
    status, _, body = await origin.license(request_body([os.urandom(16)]), token())
    assert (status, error_of(body)) == (404, "unknown key")
    status, _, body = await origin.license(request_body([SUNRISE.kid]))
    assert (status, error_of(body)) == (401, "missing")
    status, _, body = await origin.license(request_body([SUNRISE.kid]), token(now=NOW - 1000))
    assert (status, error_of(body)) == (401, "expired")
    status, _, body = await origin.license(request_body([SUNRISE.kid]), token(),
                                           headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert (status, error_of(body)) == (415, "unsupported content type")
    status, _, body = await origin.license(b"{" + b" " * 5000 + b"}", token())
    assert (status, error_of(body)) == (413, "request too large")

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(10):
            yield b" " * 1000

    status, _, body = await origin.get(LICENSE, token(), "POST", data=chunked(),
                                       headers={"Content-Type": "application/json"})
    assert (status, error_of(body)) == (413, "request too large")
    for method in ("GET", "PUT", "DELETE"):
        status, headers, body = await origin.get(LICENSE, token(), method)
        assert (status, error_of(body), headers["Allow"]) == (405, "method not allowed", "POST, OPTIONS")


async def test_cors_preflight_for_licence_posts(served: Callable[..., Any]) -> None:
    origin = await served()
    preflight = {"Origin": "https://player.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    for path in (LICENSE, key_path(SUNRISE)):
        status, headers, _ = await origin.get(path, None, "OPTIONS", headers=preflight)
        assert status == 204
        assert headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in headers["Access-Control-Allow-Methods"]
        assert "Content-Type" in headers["Access-Control-Allow-Headers"]
    status, headers, _ = await origin.license(request_body([SUNRISE.kid]), token(),
                                              headers={"Origin": "https://player.example",
                                                       "Content-Type": "application/json"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"


async def test_metrics_count_results_without_secrets(served: Callable[..., Any]) -> None:
    origin = await served(tokens={"burst": 100})
    good = token()
    await origin.get(key_path(SUNRISE), good)
    await origin.get(key_path(SUNRISE), good)
    await origin.get(key_path(DUSK), good)
    await origin.get(key_path(SUNRISE), None)
    await origin.license(request_body([SUNRISE.kid]), good)
    await origin.license(b"nope", good)
    status, _, body = await origin.get("/metrics")
    text = body.decode()
    assert status == 200
    for line in ('legato_key_requests_total{kind="key",node="origin",result="ok"} 2.0',
                 'legato_key_requests_total{kind="key",node="origin",result="wrong track"} 1.0',
                 'legato_key_requests_total{kind="key",node="origin",result="missing"} 1.0',
                 'legato_key_requests_total{kind="clearkey",node="origin",result="ok"} 1.0',
                 'legato_key_requests_total{kind="clearkey",node="origin",result="bad licence request"} 1.0'):
        assert line in text
    for secret in (good, good.rsplit(".", 1)[1], SUNRISE.key.hex(), b64url_encode(SUNRISE.key)):
        assert secret not in text


# ---------------------------------------------------------------- configuration


async def test_without_a_key_store_there_is_no_key_service(setup: Setup) -> None:
    runner, url, _, _ = await serve(OriginConfig(store=setup.store, access_log=False))
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}{key_path(SUNRISE)}?token={token()}") as resp:
            assert resp.status == 404 and "no key service on this origin" in await resp.text()
    finally:
        await runner.cleanup()


def test_config_checks(setup: Setup, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="inside the served store"):
        build(OriginConfig, {"store": str(setup.store), "keys": {"store": str(setup.store / "keys.sqlite")},
                             "tokens": {"public_keys": {"k1": str(setup.public_file)}}})
    with pytest.raises(ConfigError, match="tokens.public_keys is empty"):
        build(OriginConfig, {"store": str(setup.store), "keys": {"store": str(setup.keystore)}})
    with pytest.raises(ConfigError, match="trusted_proxies 'nowhere'"):
        build(OriginConfig, {"trusted_proxies": ["nowhere"]})
    config = build(OriginConfig, {"store": str(setup.store), "keys": {"store": str(setup.keystore)},
                                  "tokens": {"public_keys": {"k1": str(setup.public_file)}},
                                  "trusted_proxies": ["10.0.0.0/8"]})
    assert config.keys.store == setup.keystore


# ---------------------------------------------------------------- a real process


def write_origin_toml(setup: Setup, path: Path, **keys: str) -> Path:
    entries = {"store": str(setup.keystore), "master_key_file": str(setup.master_file), **keys}
    path.write_text(f'store = "{setup.store}"\nlisten = "127.0.0.1:0"\n'
                    "[keys]\n" + "".join(f'{k} = "{v}"\n' for k, v in entries.items()) +
                    f'[tokens.public_keys]\nk1 = "{setup.public_file}"\n')
    return path


def fetch(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_tokens_and_keys_never_reach_the_log(setup: Setup, tmp_path: Path) -> None:
    import time

    config = write_origin_toml(setup, tmp_path / "origin.toml")
    with origin_process(setup.store, "--config", str(config)) as node:
        now = time.time()
        good = issue(SIGNER, "k1", user="alice", session="log-test", tracks=("sunrise",), now=now)
        expired = issue(SIGNER, "k1", user="alice", session="log-test", tracks=("sunrise",), now=now - 1000)
        assert fetch(f"{node.url}{key_path(SUNRISE)}?token={good}") == (200, SUNRISE.key)
        assert fetch(f"{node.url}{key_path(DUSK)}?token={good}")[0] == 403
        assert fetch(f"{node.url}{key_path(SUNRISE)}?token={expired}")[0] == 401
        assert fetch(f"{node.url}{key_path(SUNRISE)}?token={good[:-3]}")[0] == 401
        status, body = fetch(f"{node.url}{LICENSE}?token={good}", request_body([SUNRISE.kid, SUNRISE_FLAC.kid]))
        assert status == 200 and len(json.loads(body)["keys"]) == 2
        assert fetch(f"{node.url}{LICENSE}?token={good}", b"{bad json")[0] == 400
        _, metrics = fetch(f"{node.url}/metrics")
        deadline = time.monotonic() + 5
        while node.stderr().count('"/keys/') < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # the access log line follows the response
        log = node.stderr()
    assert f'"path":"{key_path(SUNRISE)}"' in log and '"path":"/license/clearkey"' in log
    for secret in (good, expired, good.split(".")[2], good.rsplit(".", 1)[1], expired.rsplit(".", 1)[1]):
        assert secret not in log and secret not in metrics.decode()
    for key in (SUNRISE, SUNRISE_FLAC, DUSK):
        for form in (key.key.hex(), b64url_encode(key.key), base64.b64encode(key.key).decode()):
            assert form not in log and form not in metrics.decode()
    assert MASTER.hex() not in log and base64.b64encode(MASTER).decode() not in log
    assert "Traceback" not in log


@pytest.mark.parametrize("problem", ["wrong master", "missing store", "corrupt store", "bad public key"])
def test_the_origin_refuses_to_start_on_a_bad_key_service(setup: Setup, tmp_path: Path, problem: str) -> None:
    import subprocess
    import sys

    keys: dict[str, str] = {}
    if problem == "wrong master":
        other = tmp_path / "other.key"
        other.write_text(base64.b64encode(os.urandom(32)).decode())
        keys["master_key_file"] = str(other)
        expected = "master key does not match"
    elif problem == "missing store":
        keys["store"] = str(tmp_path / "absent.sqlite")
        expected = "no such file"
    elif problem == "corrupt store":
        corrupt = tmp_path / "corrupt.sqlite"
        corrupt.write_bytes(os.urandom(4096))
        keys["store"] = str(corrupt)
        expected = "not a usable SQLite key store"
    else:
        setup.public_file.write_text("not a key")
        expected = "not a PEM public key"
    config = write_origin_toml(setup, tmp_path / "origin.toml", **keys)
    out = subprocess.run([sys.executable, "-m", "legato.cli", "origin", "--config", str(config)],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert out.returncode == 2 and expected in out.stderr and "Traceback" not in out.stderr
    assert not out.stdout


async def test_concurrent_key_requests(served: Callable[..., Any]) -> None:
    origin = await served(tokens={"burst": 1000})
    good = token()
    results = await asyncio.gather(*(origin.get(key_path(SUNRISE), good) for _ in range(50)))
    assert all(status == 200 and body == SUNRISE.key for status, _, body in results)
