"""The ``[keys]`` and ``[tokens]`` config sections, and loading the secrets they name.

Both sections are shared by every command that needs them: ``legato package
--protect`` and ``legato keys`` read ``[keys]``; the origin's key service reads
both; ``legato token`` and the edge gate read ``[tokens]`` (see
config/drm.toml for an annotated example).

Secrets never live in config files themselves, only where to find them:

* the **master key** (32 bytes) comes from ``master_key_file`` when set, else
  from the environment variable ``master_key_env``.  A file holds the key raw
  (exactly 32 binary bytes) or as text: base64 (standard or URL-safe, padding
  optional) or 64 hex digits.  The variable holds base64 or hex.
* **signing keys** are PEM files: Ed25519 public keys for verifiers (several
  at once, by key id, so a new key can be rolled out before tokens signed with
  it appear), the private key only for the issuer.

Every error is a ``legato.config.ConfigError`` naming the file or variable;
none ever contains key material.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from drm.tokens import KEY_ID_RE
from legato.config import ConfigError, load_section, setting

MASTER_KEY_BYTES = 32
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_SECRET_FILE = 64 << 10


@dataclass(frozen=True)
class KeysConfig:
    store: Path | None = setting(None, "content key store (SQLite file) outside the served store tree; unset: no key store (no protected packaging, no key service)")  # noqa: RUF009
    master_key_file: Path | None = setting(None, "file holding the 32-byte master key (raw, base64 or hex); when unset the key comes from master_key_env")  # noqa: RUF009
    master_key_env: str = setting("LEGATO_MASTER_KEY", "environment variable holding the master key "
                                  "(base64 or hex) when master_key_file is unset")

    def __post_init__(self) -> None:
        if not _ENV_NAME_RE.fullmatch(self.master_key_env):
            raise ValueError(f"master_key_env {self.master_key_env!r} is not an environment variable name")

    def require_store(self) -> Path:
        """The store path, or a ConfigError saying that ``[keys] store`` is not set."""
        if self.store is None:
            raise ConfigError("[keys] store is not set: name the key store file (SQLite), "
                              "outside the served store tree")
        return self.store


@dataclass(frozen=True)
class TokensConfig:
    public_keys: Mapping[str, Path] = setting(
        types.MappingProxyType({}), "signing key id -> Ed25519 public key PEM file; list old and new "
        "keys together while rotating")
    private_key_file: Path | None = setting(None, "Ed25519 private key PEM file (the token issuer only; never on edges or the key service)")  # noqa: RUF009
    key_id: str = setting("", "id of the private key, written into every token it signs")
    skew: float = setting(30.0, "clock skew tolerance (s) on not-before and expiry")
    ttl: float = setting(300.0, "lifetime (s) of issued tokens")
    required: bool = setting(True, "edge gate: refuse manifest requests without a token "
                             "(the key service always requires one)")
    rate_per_session: float = setting(10.0, "key and licence requests per second allowed per session "
                                      "(token bucket refill rate)")
    burst: int = setting(20, "key and licence requests a session may make at once (bucket size)")
    rate_sessions: int = setting(100_000, "sessions the rate limiter (and tokens the key service's verifier) remembers at most "
                                 "(least recently seen are dropped first)")

    def __post_init__(self) -> None:
        for key_id in self.public_keys:
            if not KEY_ID_RE.fullmatch(key_id):
                raise ValueError(f"public_keys key id {key_id!r} must match {KEY_ID_RE.pattern}")
        if self.key_id and not KEY_ID_RE.fullmatch(self.key_id):
            raise ValueError(f"key_id {self.key_id!r} must match {KEY_ID_RE.pattern}")
        if not 0 <= self.skew <= 3600:
            raise ValueError(f"skew {self.skew} outside 0..3600")
        if not 0 < self.ttl <= 7 * 86_400:
            raise ValueError(f"ttl {self.ttl} outside (0, 604800]")
        if not self.rate_per_session > 0:
            raise ValueError(f"rate_per_session {self.rate_per_session} must be positive")
        if self.burst < 1:
            raise ValueError(f"burst {self.burst} must be at least 1")
        if self.rate_sessions < 1:
            raise ValueError(f"rate_sessions {self.rate_sessions} must be at least 1")


def load_sections(path: Path) -> tuple[KeysConfig, TokensConfig]:
    """``[keys]`` and ``[tokens]`` from a TOML file; other tables and keys are ignored, so a node's
    own config file (config/origin.toml, config/edge.toml) serves as well as config/drm.toml.
    A missing section gives that section's defaults."""
    return load_section(KeysConfig, path, "keys"), load_section(TokensConfig, path, "tokens")


# ---------------------------------------------------------------- secrets


def _read_secret_file(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(_MAX_SECRET_FILE + 1)
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} file {path}: is a directory") from None
    except OSError as exc:
        raise ConfigError(f"{what} file {path}: cannot read: {exc.strerror}") from None
    if len(data) > _MAX_SECRET_FILE:
        raise ConfigError(f"{what} file {path}: too large to be a key")
    return data


def decode_master_key(data: bytes) -> bytes | None:
    """32 raw bytes, or base64 / URL-safe base64 / hex text of 32 bytes; None if it is none of them.

    32 bytes that are all printable text are not taken as a raw key (a random
    key is that by chance with probability ~1e-14): they are far more likely a
    truncated or mistyped text key.
    """
    if len(data) == MASTER_KEY_BYTES and not re.fullmatch(rb"[\x20-\x7e\r\n\t]*", data):
        return data
    text = data.strip()
    if len(text) == 2 * MASTER_KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return None
    if re.fullmatch(rb"[A-Za-z0-9+/_-]{43}=?", text):
        try:
            decoded = base64.urlsafe_b64decode(text.replace(b"+", b"-").replace(b"/", b"_").rstrip(b"=") + b"=")
        except (binascii.Error, ValueError):
            return None
        return decoded if len(decoded) == MASTER_KEY_BYTES else None
    return None


def encode_master_key(key: bytes) -> str:
    """The text form written by ``legato keys genkey``: standard base64."""
    return base64.b64encode(key).decode("ascii")


def load_master_key(cfg: KeysConfig, environ: Mapping[str, str] | None = None) -> bytes:
    """The 32-byte master key named by ``cfg`` (file first, else the environment variable)."""
    expected = "32 raw bytes, or 32 bytes as base64 or as 64 hex digits"
    if cfg.master_key_file is not None:
        key = decode_master_key(_read_secret_file(cfg.master_key_file, "master key"))
        if key is None:
            raise ConfigError(f"master key file {cfg.master_key_file}: not a master key ({expected})")
        return key
    env = os.environ if environ is None else environ
    value = env.get(cfg.master_key_env)
    if not value:
        raise ConfigError(f"no master key: set [keys] master_key_file or the environment variable "
                          f"{cfg.master_key_env}")
    key = decode_master_key(value.encode())
    if key is None or len(value.encode()) == MASTER_KEY_BYTES:
        raise ConfigError(f"environment variable {cfg.master_key_env}: not a master key "
                          "(32 bytes as base64 or as 64 hex digits)")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """One Ed25519 public key from a PEM file."""
    data = _read_secret_file(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ConfigError(f"public key file {path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"public key file {path}: not an Ed25519 key ({type(key).__name__})")
    return key


def load_public_keys(cfg: TokensConfig) -> dict[str, Ed25519PublicKey]:
    """Every verifying key of ``[tokens] public_keys``, by key id."""
    return {key_id: load_public_key(path) for key_id, path in cfg.public_keys.items()}


def load_private_key(cfg: TokensConfig) -> tuple[str, Ed25519PrivateKey]:
    """(key id, private key) of the token issuer."""
    if cfg.private_key_file is None:
        raise ConfigError("[tokens] private_key_file is not set (only the token issuer holds it)")
    if not cfg.key_id:
        raise ConfigError("[tokens] key_id is not set (the id verifiers know the public key by)")
    data = _read_secret_file(cfg.private_key_file, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"private key file {cfg.private_key_file}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"private key file {cfg.private_key_file}: not an Ed25519 key")
    return cfg.key_id, key
