"""`legato edge`: its config files and flags, bad key files, reload of the public keys (real processes)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key
from servers import node_process
from upstream_standin import key_service

from drm.tokens import issue
from edge.config import EdgeConfig
from legato import config as cfg
from legato.topology import Topology
from origin.config import OriginConfig

REPO = Path(__file__).resolve().parents[2]
MANIFEST = "/tracks/t1/master.m3u8"


def pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def edge(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "legato.cli", "edge", "--listen", "127.0.0.1:0",
                           "--upstream", "http://127.0.0.1:9", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_shipped_configs_load() -> None:
    edge_cfg = cfg.load(EdgeConfig, REPO / "config" / "edge.toml")
    assert edge_cfg.tokens.required and "k1" in edge_cfg.tokens.public_keys
    topo_edge = cfg.load(EdgeConfig, REPO / "config" / "topology-edge.toml")
    assert set(topo_edge.tokens.public_keys) == {"k1"}
    origin = cfg.load(OriginConfig, REPO / "config" / "topology-origin.toml")
    assert origin.keys.store is not None and set(origin.tokens.public_keys) == {"k1"}
    topology = cfg.load(Topology, REPO / "config" / "topology-protected.toml")
    assert str(topology.origin.config) == "config/topology-origin.toml"
    assert {str(e.config) for e in topology.edge} == {"config/topology-edge.toml"}


def test_bad_public_keys_stop_the_edge_at_start(tmp_path: Path) -> None:
    not_pem = tmp_path / "garbage.pem"
    not_pem.write_bytes(b"-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n")
    rsa = tmp_path / "rsa.pem"
    rsa.write_bytes(generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    cases = [
        (("--public-key", "k1"), "KEYID=PEMFILE"),
        (("--public-key", "=x.pem"), "KEYID=PEMFILE"),
        (("--public-key", f"bad id!={rsa}"), "key id"),
        (("--public-key", f"k1={tmp_path / 'missing.pem'}"), "no such file"),
        (("--public-key", f"k1={not_pem}"), "not a PEM public key"),
        (("--public-key", f"k1={rsa}"), "not an Ed25519 key"),
        (("--trusted-proxy", "10.0.0.0/33"), "trusted_proxies"),
        (("--geo-database", str(not_pem)), "geo.database"),
    ]
    for args, message in cases:
        proc = edge(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
    config = tmp_path / "edge.toml"
    config.write_text('[tokens]\npublic_keys = { k1 = 3 }\n')
    proc = edge("--config", str(config))
    assert proc.returncode == 2 and "tokens.public_keys" in proc.stderr, proc.stderr


def test_public_key_flag_and_sighup_reload(tmp_path: Path) -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    (tmp_path / "old.pem").write_bytes(pem(old))
    (tmp_path / "new.pem").write_bytes(pem(new))
    config = tmp_path / "edge.toml"
    config.write_text(f'[tokens]\npublic_keys = {{ k2 = "{tmp_path / "new.pem"}" }}\n')

    def token(key: Ed25519PrivateKey, key_id: str) -> str:
        return issue(key, key_id, user="u", session="s", tracks=("t1",), now=time.time())

    with key_service() as (upstream, _), node_process(
            "edge", "--config", str(config), "--listen", "127.0.0.1:0", "--upstream", upstream,
            "--cache-dir", str(tmp_path / "cache"), "--public-key", f"k1={tmp_path / 'old.pem'}") as node:
        assert get(f"{node.url}{MANIFEST}?token={token(old, 'k1')}") == 200  # the flag's key
        assert get(f"{node.url}{MANIFEST}?token={token(new, 'k2')}") == 200  # and the config's
        assert get(f"{node.url}{MANIFEST}") == 401
        # rotate: the config now names the new key k3 (k2 is gone) and lets tokenless manifests through;
        # the flag's k1 stays (flags are applied again on every reload)
        config.write_text(f'[tokens]\npublic_keys = {{ k3 = "{tmp_path / "new.pem"}" }}\nrequired = false\n')
        node.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while get(f"{node.url}{MANIFEST}") != 200:  # required = false took effect
            assert time.monotonic() < deadline, node.stderr()[-2000:]
            time.sleep(0.1)
        assert get(f"{node.url}{MANIFEST}?token={token(new, 'k3')}") == 200
        assert get(f"{node.url}{MANIFEST}?token={token(old, 'k1')}") == 200
        assert get(f"{node.url}{MANIFEST}?token={token(new, 'k2')}") == 401
        # a reload with a broken key file is refused: the running gate stays
        config.write_text(f'[tokens]\npublic_keys = {{ k4 = "{tmp_path / "nope.pem"}" }}\n')
        node.proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert get(f"{node.url}{MANIFEST}") == 200 and get(f"{node.url}{MANIFEST}?token={token(new, 'k3')}") == 200
        assert "reload refused" in node.stderr()
        status = json.loads(urllib.request.urlopen(node.url + "/healthz", timeout=10).read())["status"]
        assert status in ("ok", "degraded")


def test_the_regional_has_no_gate_flags() -> None:
    proc = subprocess.run([sys.executable, "-m", "legato.cli", "regional", "--help"], capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 0 and "--public-key" not in proc.stdout
