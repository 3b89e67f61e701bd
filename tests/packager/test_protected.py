"""`legato package --protect`: encrypted output, read back by ffmpeg, ffprobe and our own decryption.

Real parts throughout: the real CLI, the real key store (drm.keys) with a
master key file, real ffmpeg decoding the HLS AES-128 stream over HTTP from a
loopback server that also serves ``/keys/{kid}``, and the CENC stream with
``-decryption_key``.  The clear reference is the session's ``packaged_store``
(same source, ``--protect none``): the encoder is deterministic, so decoded
PCM must be identical, sample for sample.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import xxhash

from drm import aes128, cenc
from drm.keys import ContentKey, KeyStore, KeyStoreError
from packager import mp4
from packager.ladder import LadderConfig
from packager.pipeline import package_batch
from packager.protection import Protection
from packager.samples import write_sample

RENDITIONS = ("aac-96k", "aac-160k", "aac-320k", "flac")
MASTER = bytes(range(100, 132))  # the test master key (32 bytes)


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`legato ARGS` with a controlled environment (no master key variable unless given)."""
    base = {k: v for k, v in os.environ.items() if k != "LEGATO_MASTER_KEY"}
    return subprocess.run([sys.executable, "-m", "legato.cli", *args], capture_output=True, text=True, check=False,
                          timeout=600, stdin=subprocess.DEVNULL, env={**base, **(env or {})})


@dataclass(frozen=True)
class Keys:
    config: Path  # TOML with [keys]
    store: Path  # the key store file
    master_file: Path

    def args(self) -> list[str]:
        return ["--keys-config", str(self.config)]

    def key(self, track: str, group: str = "") -> ContentKey:
        with KeyStore.open(self.store, MASTER, create=False) as ks:
            kid = dict(ks.for_track(track))[group]
            found = ks.get(kid)
        assert found is not None
        return found


def make_keys(root: Path) -> Keys:
    root.mkdir(parents=True, exist_ok=True)
    master = root / "master.key"
    master.write_text(base64.b64encode(MASTER).decode() + "\n")
    cfg = root / "keys.toml"
    cfg.write_text(f'[keys]\nstore = "{root / "keys.db"}"\nmaster_key_file = "{master}"\n')
    return Keys(cfg, root / "keys.db", master)


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory, source_track: Path) -> tuple[Path, Keys]:
    """The standard source packaged with --protect both (the default) under the id 'sunrise'."""
    root = tmp_path_factory.mktemp("protected")
    keys = make_keys(root / "secrets")
    store = root / "store"
    result = run("package", str(source_track), "--store", str(store), "--track-id", "sunrise", "--no-progress",
                 *keys.args())
    assert result.returncode == 0, result.stdout + result.stderr
    return store, keys


def doc_of(store: Path, track: str = "sunrise") -> dict[str, Any]:
    return json.loads((store / "tracks" / track / "track.json").read_text())


def renditions(doc: dict[str, Any], scheme: str | None) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in doc["renditions"] if r.get("scheme") == scheme}


# --- layout, catalog and our own decryption ------------------------------------------

def test_layout_and_catalog(protected: tuple[Path, Keys]) -> None:
    store, keys = protected
    root = store / "tracks" / "sunrise"
    assert sorted(p.name for p in root.iterdir()) == ["cenc", "hls-aes128", "manifest.mpd", "master.m3u8",
                                                      "track.json"]  # no clear rendition anywhere
    doc = doc_of(store)
    key = keys.key("sunrise")
    assert doc["protection"] == {"schemes": ["hls-aes128", "cenc"], "key_scope": "track", "kids": {"": key.kid_hex}}
    for scheme in ("hls-aes128", "cenc"):
        rs = renditions(doc, scheme)
        assert list(rs) == list(RENDITIONS)
        for r in rs.values():
            assert r["kid"] == key.kid_hex and r["path"] == f"{scheme}/{r['id']}"
            init = (root / r["path"] / "init.mp4").read_bytes()
            assert (len(init), xxhash.xxh3_64_hexdigest(init)) == (r["init_bytes"], r["init_xxh3"])
            for s in r["segments"]:
                body = (root / r["path"] / s["name"]).read_bytes()
                assert (len(body), xxhash.xxh3_64_hexdigest(body)) == (s["bytes"], s["xxh3"])
                assert ("iv" in s) == (scheme == "hls-aes128")
    assert not (root / "cenc" / "flac" / "index.m3u8").exists()  # DASH only
    assert not list((store / "tracks").glob(".tmp-*"))


def test_no_key_material_in_the_store(protected: tuple[Path, Keys]) -> None:
    store, keys = protected
    key = keys.key("sunrise")
    for path in (store / "tracks" / "sunrise").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert key.key not in data and key.key.hex().encode() not in data, path
            assert MASTER not in data and base64.b64encode(MASTER) not in data, path


def test_hls_aes128_segments_are_the_clear_segments_encrypted(protected: tuple[Path, Keys],
                                                             packaged_store: Path) -> None:
    store, keys = protected
    key = keys.key("sunrise")
    clear_root, root = packaged_store / "tracks" / "sunrise", store / "tracks" / "sunrise"
    for rid, r in renditions(doc_of(store), "hls-aes128").items():
        # the init segment is served clear, byte for byte the clear one
        assert (root / r["path"] / "init.mp4").read_bytes() == (clear_root / rid / "init.mp4").read_bytes()
        ivs = [s["iv"] for s in r["segments"]]
        assert len(set(ivs)) == len(ivs), "an IV is reused"
        for s in r["segments"]:
            body = (root / r["path"] / s["name"]).read_bytes()
            assert not body.startswith(mp4.box(b"styp", b"msdh")[:8])
            assert aes128.decrypt_cbc(body, key.key, bytes.fromhex(s["iv"])) == (clear_root / rid / s["name"]).read_bytes()


def test_cenc_samples_decrypt_to_the_clear_samples(protected: tuple[Path, Keys], packaged_store: Path) -> None:
    store, keys = protected
    key = keys.key("sunrise")
    clear_root, root = packaged_store / "tracks" / "sunrise", store / "tracks" / "sunrise"
    for rid, r in renditions(doc_of(store), "cenc").items():
        init = (root / r["path"] / "init.mp4").read_bytes()
        tenc = mp4.find(init, "moov/trak/mdia/minf/stbl/stsd")
        assert init[tenc.body + 12:tenc.body + 16] == b"enca"
        pssh = mp4.find(init, "moov/pssh")
        assert init[pssh.body + 4:pssh.body + 20] == cenc.COMMON_SYSTEM_ID.bytes
        assert key.kid in init[pssh.start:pssh.end]
        all_ivs = []
        for s in r["segments"]:
            seg = (root / r["path"] / s["name"]).read_bytes()
            clear = (clear_root / rid / s["name"]).read_bytes()
            enc, plain = mp4.read_fragmented(init + seg), mp4.read_fragmented(init + clear)
            assert enc.sizes == plain.sizes and enc.durations == plain.durations
            senc = mp4.find(seg, "moof/traf/senc")
            count = int.from_bytes(seg[senc.body + 4:senc.body + 8], "big")
            ivs = [seg[senc.body + 8 + 8 * i:senc.body + 16 + 8 * i] for i in range(count)]
            all_ivs += ivs
            whole, whole_clear = init + seg, init + clear
            for i, (o, n) in enumerate(zip(enc.offsets, enc.sizes)):
                sample = whole_clear[plain.offsets[i]:plain.offsets[i] + n]
                assert whole[o:o + n] != sample
                assert cenc.decrypt_sample(whole[o:o + n], key.key, ivs[i]) == sample
        assert len(set(all_ivs)) == len(all_ivs), "a CTR IV is reused within a rendition"


# --- ffmpeg and ffprobe ----------------------------------------------------------------

class _StoreAndKeys(http.server.SimpleHTTPRequestHandler):
    """The store's files plus ``/keys/{kid}`` from a dict: a stand-in for origin's key service."""

    keys: ClassVar[dict[str, bytes]] = {}  # each server gets a subclass with its own

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/keys/"):
            key = self.keys.get(self.path.removeprefix("/keys/"))
            if key is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", "16")
            self.end_headers()
            self.wfile.write(key)
            return
        super().do_GET()


@pytest.fixture
def serve() -> Iterator[Callable[[Path, dict[str, bytes]], str]]:
    """``serve(store, keys)`` -> base URL of a loopback server for that store and those keys."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(store: Path, keys: dict[str, bytes]) -> str:
        handler = type("Handler", (_StoreAndKeys,), {"keys": keys})
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(store)))
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_port}"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def pcm(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """ffmpeg decoding to 32-bit PCM (exact for the 24-bit FLAC rendition too)."""
    cmd = ["ffmpeg", *(["-nostdin"] if stdin is None else []), "-v", "error", *args, "-f", "s32le", "-"]
    return subprocess.run(cmd, input=stdin, capture_output=True, check=False, timeout=120)


def hls_pcm(url_or_path: str) -> subprocess.CompletedProcess[bytes]:
    return pcm("-allowed_extensions", "ALL", "-i", url_or_path)


def concatenated(root: Path) -> bytes:
    return (root / "init.mp4").read_bytes() + b"".join(p.read_bytes() for p in sorted(root.glob("seg-*.m4s")))


def cenc_pcm(data: bytes, *pre: str) -> subprocess.CompletedProcess[bytes]:
    # Read from a pipe: ffmpeg 5.1 looks up the encryption info of the last fragment it parsed, and on a
    # seekable file it parses every fragment up front (so only the last one would decrypt).  Streamed, as a
    # player fetches segments, it reads one fragment at a time.
    return pcm(*pre, "-i", "pipe:0", stdin=data)


@pytest.mark.parametrize("rid", RENDITIONS)
def test_ffmpeg_decodes_hls_aes128_over_http_to_the_clear_pcm(protected: tuple[Path, Keys], packaged_store: Path,
                                                             serve, rid: str) -> None:  # type: ignore[no-untyped-def]
    store, keys = protected
    key = keys.key("sunrise")
    base = serve(store, {key.kid_hex: key.key})
    got = hls_pcm(f"{base}/tracks/sunrise/hls-aes128/{rid}/index.m3u8")
    clear = hls_pcm(str(packaged_store / "tracks" / "sunrise" / rid / "index.m3u8"))
    assert got.returncode == 0 and clear.returncode == 0, got.stderr.decode()[-500:]
    assert len(clear.stdout) > 20 * 44100 * 8 * 0.99
    assert got.stdout == clear.stdout


@pytest.mark.parametrize("rid", RENDITIONS)
def test_ffmpeg_decrypts_cenc_to_the_clear_pcm(protected: tuple[Path, Keys], packaged_store: Path, rid: str) -> None:
    store, keys = protected
    key = keys.key("sunrise")
    got = cenc_pcm(concatenated(store / "tracks" / "sunrise" / "cenc" / rid), "-decryption_key", key.key.hex())
    clear = cenc_pcm(concatenated(packaged_store / "tracks" / "sunrise" / rid))
    assert got.returncode == 0 and clear.returncode == 0, got.stderr.decode()[-500:]
    assert len(clear.stdout) > 20 * 44100 * 8 * 0.99
    assert got.stdout == clear.stdout


@pytest.mark.parametrize("rid", ["aac-160k", "flac"])
def test_ffprobe_reads_the_protected_renditions(protected: tuple[Path, Keys], rid: str) -> None:
    store, _ = protected
    root = store / "tracks" / "sunrise"
    for scheme in ("cenc", "hls-aes128"):
        init = root / scheme / rid / "init.mp4"
        out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,sample_rate,channels",
                              "-of", "json", str(init)], capture_output=True, text=True, check=True).stdout
        (stream,) = json.loads(out)["streams"]
        assert (stream["codec_name"], stream["sample_rate"], stream["channels"]) == (
            "aac" if rid.startswith("aac") else "flac", "44100", 2)


def test_without_the_key_nothing_decodes(protected: tuple[Path, Keys], packaged_store: Path,
                                         serve) -> None:  # type: ignore[no-untyped-def]
    store, keys = protected
    key = keys.key("sunrise")
    clear_root = packaged_store / "tracks" / "sunrise"
    # HLS: the key service refuses (404) or hands out another key
    for served in ({}, {key.kid_hex: os.urandom(16)}):
        base = serve(store, served)
        got = hls_pcm(f"{base}/tracks/sunrise/hls-aes128/aac-160k/index.m3u8")
        clear = hls_pcm(str(clear_root / "aac-160k" / "index.m3u8")).stdout
        assert got.returncode != 0 or got.stdout != clear
        assert clear[:1 << 16] not in got.stdout
    # a lone encrypted segment after the clear init is no MP4 fragment at all
    lone = (clear_root / "aac-160k" / "init.mp4").read_bytes() \
        + (store / "tracks/sunrise/hls-aes128/aac-160k/seg-00002.m4s").read_bytes()
    got = cenc_pcm(lone)
    assert got.returncode != 0 or not got.stdout
    # CENC: no key, or the wrong one
    for pre in ((), ("-decryption_key", os.urandom(16).hex())):
        for rid in ("aac-160k", "flac"):
            got = cenc_pcm(concatenated(store / "tracks" / "sunrise" / "cenc" / rid), *pre)
            clear = cenc_pcm(concatenated(clear_root / rid)).stdout
            assert got.stdout != clear
            assert clear[1 << 16:1 << 17] not in got.stdout


# --- idempotence and keys ----------------------------------------------------------------

def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, xxhash.xxh3_64_hexdigest(p.read_bytes()))
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_rerun_is_a_no_op_and_force_keeps_the_key_and_the_bytes(protected: tuple[Path, Keys],
                                                                source_track: Path) -> None:
    store, keys = protected
    root = store / "tracks" / "sunrise"
    before = snapshot(root)
    kid = keys.key("sunrise").kid
    again = run("package", str(source_track), "--store", str(store), "--track-id", "sunrise", "--no-progress",
                "--protect", "both", *keys.args())
    assert again.returncode == 0 and "0 packaged, 1 skipped, 0 failed" in again.stdout, again.stdout + again.stderr
    assert snapshot(root) == before
    forced = run("package", str(source_track), "--store", str(store), "--track-id", "sunrise", "--no-progress",
                 "--force", *keys.args())
    assert forced.returncode == 0 and "1 packaged" in forced.stdout, forced.stdout + forced.stderr
    after = snapshot(root)
    # same key, and deterministic IVs: every file (segments, playlists, track.json) is byte-identical
    assert {k: v[1] for k, v in after.items()} == {k: v[1] for k, v in before.items()}
    assert after != before  # ...but it was rebuilt
    with KeyStore.open(keys.store, MASTER, create=False) as ks:
        assert ks.for_track("sunrise") == [("", kid)]


def test_protection_variants_and_switching(tmp_path: Path, serve) -> None:  # type: ignore[no-untyped-def]
    src = write_sample(tmp_path / "short.flac", 7.0, style="sunrise", title="Short")
    keys = make_keys(tmp_path / "secrets")
    store = tmp_path / "store"
    root = store / "tracks" / "short"

    def package(*extra: str) -> dict[str, Any]:
        result = run("package", str(src), "--store", str(store), "--track-id", "short", "--no-progress",
                     *keys.args(), *extra)
        assert result.returncode == 0 and "1 packaged" in result.stdout, result.stdout + result.stderr
        return doc_of(store, "short")

    # clear first, then protected: the clear renditions must be gone (never served next to encrypted ones)
    doc = package("--protect", "none")
    assert doc["protection"] == {"schemes": []} and (root / "flac" / "init.mp4").exists()
    with pytest.raises(KeyStoreError):  # a clear track mints no key (the store file is not even created)
        KeyStore.open(keys.store, MASTER, create=False)

    doc = package("--protect", "cenc", "--key-scope", "rendition")
    assert sorted(p.name for p in root.iterdir()) == ["cenc", "manifest.mpd", "track.json"]  # DASH only
    kids = doc["protection"]["kids"]
    assert doc["protection"]["key_scope"] == "rendition" and sorted(kids) == sorted(RENDITIONS)
    assert len(set(kids.values())) == 4
    assert all(r["kid"] == kids[r["id"]] for r in doc["renditions"])
    mpd = (root / "manifest.mpd").read_text()
    for kid in kids.values():
        assert cenc.kid_uuid(bytes.fromhex(kid)) in mpd
    flac_key = keys.key("short", "flac")
    got = cenc_pcm(concatenated(root / "cenc" / "flac"), "-decryption_key", flac_key.key.hex())
    assert got.returncode == 0 and len(got.stdout) >= 7 * 44100 * 8
    wrong = cenc_pcm(concatenated(root / "cenc" / "flac"), "-decryption_key", keys.key("short", "aac-96k").key.hex())
    assert wrong.stdout != got.stdout

    doc = package("--protect", "hls-aes128")  # the per-rendition keys of this track already exist...
    assert sorted(p.name for p in root.iterdir()) == ["hls-aes128", "master.m3u8", "track.json"]  # HLS only
    assert doc["protection"] == {"schemes": ["hls-aes128"], "key_scope": "track",
                                 "kids": {"": keys.key("short").kid_hex}}  # ...but track scope mints its own
    key = keys.key("short")
    base = serve(store, {key.kid_hex: key.key})
    got = hls_pcm(f"{base}/tracks/short/hls-aes128/aac-96k/index.m3u8")
    assert got.returncode == 0 and len(got.stdout) >= 7 * 44100 * 8, got.stderr.decode()[-300:]
    with KeyStore.open(keys.store, MASTER, create=False) as ks:
        assert len(ks.for_track("short")) == 5  # four per rendition, one per track: each minted once


def test_key_store_failure_during_a_run_publishes_nothing(tmp_path: Path) -> None:
    src = write_sample(tmp_path / "short.flac", 3.0)
    store = tmp_path / "store"

    def broken(track: str, groups: object) -> dict[str, ContentKey]:
        raise KeyStoreError(f"key store {tmp_path / 'keys.db'}: cannot write: disk I/O error")

    (outcome,) = package_batch([src], store, LadderConfig(), track_id="short",
                               protection=Protection(("hls-aes128", "cenc")), keys=broken)
    assert outcome.status == "failed" and "cannot write" in outcome.reason
    assert not (store / "tracks" / "short").exists()
    assert not list((store / "tracks").glob(".tmp-*"))


def test_a_source_that_fails_mints_no_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"fLaC" + os.urandom(4000))
    keys = make_keys(tmp_path / "secrets")
    result = run("package", str(bad), "--store", str(tmp_path / "store"), "--no-progress", *keys.args())
    assert result.returncode == 1 and "failed" in result.stdout and "Traceback" not in result.stderr
    with KeyStore.open(keys.store, MASTER, create=False) as ks:
        assert ks.tracks() == []


# --- bad configuration: a clear error, exit 2, nothing packaged -------------------------------

def assert_refused(result: subprocess.CompletedProcess[str], store: Path, *words: str) -> None:
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "Traceback" not in out
    for word in words:
        assert word in result.stderr, result.stderr
    assert not (store / "tracks").exists() or not any((store / "tracks").iterdir())
    for secret in (MASTER.hex(), base64.b64encode(MASTER).decode()):
        assert secret not in out


def test_protection_without_a_key_store_is_refused(tmp_path: Path, source_track: Path) -> None:
    store = tmp_path / "store"
    result = run("package", str(source_track), "--store", str(store), "--no-progress")
    assert_refused(result, store, "key store", "--keystore", "--protect none")


def test_missing_master_key_is_refused(tmp_path: Path, source_track: Path) -> None:
    store = tmp_path / "store"
    result = run("package", str(source_track), "--store", str(store), "--keystore", str(tmp_path / "k.db"),
                 "--no-progress")
    assert_refused(result, store, "LEGATO_MASTER_KEY")
    assert not (tmp_path / "k.db").exists()


def test_master_key_from_the_environment(tmp_path: Path) -> None:
    src = write_sample(tmp_path / "s.flac", 2.0)
    store = tmp_path / "store"
    env = {"LEGATO_MASTER_KEY": base64.b64encode(MASTER).decode()}
    result = run("package", str(src), "--store", str(store), "--track-id", "s", "--keystore",
                 str(tmp_path / "k.db"), "--no-progress", "--protect", "cenc", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    with KeyStore.open(tmp_path / "k.db", MASTER, create=False) as ks:
        assert [g for g, _ in ks.for_track("s")] == [""]
    for secret in (MASTER.hex(), env["LEGATO_MASTER_KEY"]):
        assert secret not in result.stdout + result.stderr


def test_wrong_master_key_is_refused(tmp_path: Path, protected: tuple[Path, Keys], source_track: Path) -> None:
    _, keys = protected
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    cfg = tmp_path / "keys.toml"
    cfg.write_text(f'[keys]\nstore = "{keys.store}"\nmaster_key_file = "{other}"\n')
    store = tmp_path / "store"
    result = run("package", str(source_track), "--store", str(store), "--no-progress", "--keys-config", str(cfg))
    assert_refused(result, store, "does not match", str(keys.store))


@pytest.mark.parametrize("case", ["not sqlite", "no directory", "inside the store"])
def test_unusable_key_store_is_refused(tmp_path: Path, source_track: Path, case: str) -> None:
    keys = make_keys(tmp_path / "secrets")
    store = tmp_path / "store"
    path = {"not sqlite": tmp_path / "junk.db", "no directory": tmp_path / "missing" / "keys.db",
            "inside the store": store / "keys.db"}[case]
    if case == "not sqlite":
        path.write_bytes(b"this is not a database, " * 100)
    store.mkdir()
    result = run("package", str(source_track), "--store", str(store), "--no-progress", *keys.args(),
                 "--keystore", str(path))
    assert_refused(result, store, str(path.parent if case == "no directory" else path))
    assert not (store / "keys.db").exists()


@pytest.mark.parametrize(("text", "words"), [
    ("[origin]\nlisten = 1\n", ["no [keys] table"]),
    ('[keys]\nstore = "k.db"\ncolour = "red"\n', ["keys.colour", "unknown key"]),
    ("[keys\n", ["not valid TOML"]),
    ('[keys]\nstore = "k.db"\nmaster_key_env = "not a name"\n', ["master_key_env"]),
])
def test_bad_keys_config_is_refused(tmp_path: Path, source_track: Path, text: str, words: list[str]) -> None:
    cfg = tmp_path / "keys.toml"
    cfg.write_text(text)
    store = tmp_path / "store"
    result = run("package", str(source_track), "--store", str(store), "--no-progress", "--keys-config", str(cfg))
    assert_refused(result, store, str(cfg), *words)


def test_missing_keys_config_file_is_refused(tmp_path: Path, source_track: Path) -> None:
    store = tmp_path / "store"
    result = run("package", str(source_track), "--store", str(store), "--no-progress",
                 "--keys-config", str(tmp_path / "nope.toml"))
    assert_refused(result, store, "nope.toml", "no such config file")


def test_two_packagers_racing_for_a_key_agree_on_the_oldest(tmp_path: Path) -> None:
    from drm.config import KeysConfig
    from drm.keys import new_content_key
    from packager.protection import KeyStoreKeys

    keys = make_keys(tmp_path / "secrets")
    a = KeyStoreKeys(KeysConfig(keys.store, keys.master_file))
    first = a("t", ["", "flac"])
    with KeyStore.open(keys.store, MASTER) as ks:  # the loser of a race stored its own key a moment later
        ks.put("t", new_content_key(), "")
    b = KeyStoreKeys(KeysConfig(keys.store, keys.master_file))
    assert b("t", [""]) == {"": first[""]} and a("t", ["flac", ""]) == first
