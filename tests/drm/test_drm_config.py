"""drm.config: the [keys] / [tokens] sections and loading the secrets they name."""

from __future__ import annotations

import base64
import dataclasses
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from drm.config import (
    KeysConfig,
    TokensConfig,
    decode_master_key,
    encode_master_key,
    load_master_key,
    load_private_key,
    load_public_keys,
)
from legato.config import ConfigError, build, describe

MASTER = os.urandom(32)


def assert_no_secret(message: str) -> None:
    for form in (MASTER.hex(), base64.b64encode(MASTER).decode(), repr(MASTER)):
        assert form not in message


@pytest.mark.parametrize("form", ["raw", "base64", "base64-nopad", "urlsafe", "hex", "hex-upper-newline"])
def test_master_key_file_forms(tmp_path: Path, form: str) -> None:
    data = {
        "raw": MASTER,
        "base64": base64.b64encode(MASTER) + b"\n",
        "base64-nopad": base64.b64encode(MASTER).rstrip(b"="),
        "urlsafe": base64.urlsafe_b64encode(MASTER),
        "hex": MASTER.hex().encode(),
        "hex-upper-newline": MASTER.hex().upper().encode() + b"\r\n",
    }[form]
    path = tmp_path / "master.key"
    path.write_bytes(data)
    assert load_master_key(KeysConfig(master_key_file=path)) == MASTER


def test_master_key_written_form_roundtrips() -> None:
    assert decode_master_key(encode_master_key(MASTER).encode()) == MASTER


BAD_MASTER_FILES = {
    "empty": b"", "short": b"short", "31 raw": os.urandom(31), "33 raw": os.urandom(33), "not hex": b"zz" * 32,
    "base64 of 24": base64.b64encode(os.urandom(24)), "32 text chars": b"x" * 32, "binary 44": b"\xff" * 44,
    "huge": b"A" * 100_000,
}


@pytest.mark.parametrize("data", BAD_MASTER_FILES.values(), ids=BAD_MASTER_FILES.keys())
def test_bad_master_key_file_names_the_file_not_the_content(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=f"master key file {path}") as err:
        load_master_key(KeysConfig(master_key_file=path))
    assert not data or (data.hex() not in str(err.value) and repr(data) not in str(err.value))


def test_missing_master_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_master_key(KeysConfig(master_key_file=tmp_path / "nope"))
    with pytest.raises(ConfigError, match="is a directory"):
        load_master_key(KeysConfig(master_key_file=tmp_path))


def test_master_key_from_the_environment() -> None:
    cfg = KeysConfig(master_key_env="MY_MASTER")
    assert load_master_key(cfg, {"MY_MASTER": base64.b64encode(MASTER).decode()}) == MASTER
    assert load_master_key(cfg, {"MY_MASTER": MASTER.hex()}) == MASTER
    with pytest.raises(ConfigError, match="set \\[keys\\] master_key_file or the environment variable MY_MASTER"):
        load_master_key(cfg, {})
    with pytest.raises(ConfigError, match="environment variable MY_MASTER: not a master key") as err:
        load_master_key(cfg, {"MY_MASTER": MASTER.hex()[:-2]})
    assert_no_secret(str(err.value))
    with pytest.raises(ConfigError):
        load_master_key(cfg, {"MY_MASTER": "x" * 32})  # 32 characters are not 32 raw bytes


def test_file_wins_over_environment(tmp_path: Path) -> None:
    path = tmp_path / "m"
    path.write_bytes(MASTER)
    assert load_master_key(KeysConfig(master_key_file=path), {"LEGATO_MASTER_KEY": os.urandom(32).hex()}) == MASTER


def test_sections_from_toml_tables(tmp_path: Path) -> None:
    keys = build(KeysConfig, {"store": "/var/lib/legato/keys.sqlite", "master_key_file": "m.key"})
    assert keys.store == Path("/var/lib/legato/keys.sqlite") and keys.require_store() == keys.store
    tokens = build(TokensConfig, {"public_keys": {"k1": "a.pem", "k-2": "b.pem"}, "skew": 5, "burst": 3})
    assert dict(tokens.public_keys) == {"k1": Path("a.pem"), "k-2": Path("b.pem")}
    assert tokens.skew == 5.0 and tokens.ttl == 300.0 and tokens.required
    with pytest.raises(TypeError):
        tokens.public_keys["k3"] = Path("c.pem")  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        tokens.skew = 1  # type: ignore[misc]
    with pytest.raises(ConfigError, match="store is not set"):
        KeysConfig().require_store()
    for cls in (KeysConfig, TokensConfig):
        for path, help_text, _ in describe(cls):
            assert help_text, path


@pytest.mark.parametrize(("cls", "data", "message"), [
    (TokensConfig, {"public_keys": ["a.pem"]}, "public_keys: expected a table"),
    (TokensConfig, {"public_keys": {"k1": 3}}, "public_keys.k1: expected a path"),
    (TokensConfig, {"public_keys": {"bad id!": "a.pem"}}, "key id 'bad id!'"),
    (TokensConfig, {"key_id": "a.b"}, "key_id 'a.b' must match"),
    (TokensConfig, {"skew": -1}, "skew -1"),
    (TokensConfig, {"ttl": 0}, "ttl 0"),
    (TokensConfig, {"rate_per_session": 0}, "rate_per_session"),
    (TokensConfig, {"burst": 0}, "burst 0"),
    (TokensConfig, {"colour": 1}, "colour: unknown key"),
    (KeysConfig, {"master_key_env": "NOT A NAME"}, "master_key_env"),
    (KeysConfig, {"store": 5}, "store: expected"),
])
def test_bad_sections_name_the_key(cls: type, data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(cls, data)


def write_pem_pair(directory: Path, name: str) -> tuple[Path, Path, Ed25519PrivateKey]:
    private = Ed25519PrivateKey.generate()
    priv = directory / f"{name}.pem"
    pub = directory / f"{name}.pub.pem"
    priv.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    pub.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub, private


def test_signing_keys_load(tmp_path: Path) -> None:
    priv1, pub1, key1 = write_pem_pair(tmp_path, "k1")
    _, pub2, key2 = write_pem_pair(tmp_path, "k2")
    cfg = TokensConfig(public_keys={"k1": pub1, "k2": pub2}, private_key_file=priv1, key_id="k1")
    keys = load_public_keys(cfg)
    raw = serialization.PublicFormat.Raw
    enc = serialization.Encoding.Raw
    assert keys["k1"].public_bytes(enc, raw) == key1.public_key().public_bytes(enc, raw)
    assert keys["k2"].public_bytes(enc, raw) == key2.public_key().public_bytes(enc, raw)
    key_id, private = load_private_key(cfg)
    assert key_id == "k1"
    assert private.public_key().public_bytes(enc, raw) == key1.public_key().public_bytes(enc, raw)


def test_bad_signing_key_files(tmp_path: Path) -> None:
    priv, pub, _ = write_pem_pair(tmp_path, "k1")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    ec = tmp_path / "ec.pub.pem"
    ec.write_bytes(generate_private_key(SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ConfigError, match=f"public key file {garbage}: not a PEM public key"):
        load_public_keys(TokensConfig(public_keys={"k": garbage}))
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        load_public_keys(TokensConfig(public_keys={"k": ec}))
    with pytest.raises(ConfigError, match="no such file"):
        load_public_keys(TokensConfig(public_keys={"k": tmp_path / "missing.pem"}))
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_public_keys(TokensConfig(public_keys={"k": priv}))  # a private key where a public one goes
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key") as err:
        load_private_key(TokensConfig(private_key_file=pub, key_id="k1"))
    assert priv.read_text() not in str(err.value)
    with pytest.raises(ConfigError, match="private_key_file is not set"):
        load_private_key(TokensConfig(key_id="k1"))
    with pytest.raises(ConfigError, match="key_id is not set"):
        load_private_key(TokensConfig(private_key_file=priv))
