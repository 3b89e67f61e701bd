"""What protection a packaging run applies, and where its content keys come from.

``Protection`` (pure) is the choice made by ``legato package --protect`` and
``--key-scope``: which schemes (``legato.urls.SCHEMES``) every rendition is
written under, and which renditions share a key.  Key groups in the key
store: ``""`` for the one key of a track (``--key-scope track``, the
default), the rendition id for per-rendition keys (``--key-scope
rendition``).  Both schemes of a track use the same key: one KID per track,
so one entitlement (a token for the track) opens both the HLS key and the
ClearKey licence.  CBC and CTR under one key are safe here because no block
cipher input is ever shared between them except by a 2^-128 chance per pair
(the CTR counter blocks come from keyed-hash IVs, see ``drm.aes128``) --
the same argument that lets CCM use one key for CTR and CBC-MAC.

``KeyStoreKeys`` (I/O) gets or creates the content keys of a track in the
``drm.keys.KeyStore``: a track that already has a key for a group keeps it
(so ``--force`` and re-packaging after a ladder change re-use it, and
players holding the key keep working); a key is minted only for a group the
store has never seen for that track.  The key is stored before the track is
published, so a published protected track always has its key.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from drm.config import KeysConfig, load_master_key
from drm.keys import ContentKey, KeyStore, KeyStoreError, new_content_key
from legato.config import ConfigError, load_section, replace

PROTECT_CHOICES: dict[str, tuple[str, ...]] = {
    "both": ("hls-aes128", "cenc"),
    "hls-aes128": ("hls-aes128",),
    "cenc": ("cenc",),
    "none": (),
}
KEY_SCOPES = ("track", "rendition")


@dataclass(frozen=True)
class Protection:
    """Schemes to write (empty: clear) and the key scope."""

    schemes: tuple[str, ...] = ()
    key_scope: str = "track"

    def __post_init__(self) -> None:
        unknown = [s for s in self.schemes if s not in PROTECT_CHOICES["both"]]
        if unknown or len(set(self.schemes)) != len(self.schemes):
            raise ValueError(f"bad protection schemes {self.schemes!r}")
        if self.key_scope not in KEY_SCOPES:
            raise ValueError(f"key scope {self.key_scope!r} is not one of {', '.join(KEY_SCOPES)}")

    @classmethod
    def from_option(cls, protect: str, key_scope: str = "track") -> Protection:
        """From the ``--protect`` and ``--key-scope`` values."""
        if protect not in PROTECT_CHOICES:
            raise ValueError(f"--protect {protect!r} is not one of {', '.join(PROTECT_CHOICES)}")
        return cls(PROTECT_CHOICES[protect], key_scope)

    @property
    def enabled(self) -> bool:
        return bool(self.schemes)

    @property
    def outputs(self) -> tuple[str | None, ...]:
        """What each rendition is written as: its schemes, or ``(None,)`` (clear) when unprotected."""
        return self.schemes if self.schemes else (None,)

    def group(self, rendition_id: str) -> str:
        """The key store group of a rendition's key."""
        return rendition_id if self.key_scope == "rendition" else ""

    def groups(self, rendition_ids: Sequence[str]) -> list[str]:
        """The key groups a track with these renditions needs (none when clear)."""
        if not self.enabled:
            return []
        return list(dict.fromkeys(self.group(r) for r in rendition_ids))

    def record(self, keys: dict[str, ContentKey]) -> dict[str, Any]:
        """The ``protection`` object of track.json: schemes, key scope and KIDs by group (never keys)."""
        if not self.enabled:
            return {"schemes": []}
        return {"schemes": list(self.schemes), "key_scope": self.key_scope,
                "kids": {group: key.kid_hex for group, key in keys.items()}}

    def matches(self, recorded: object) -> bool:
        """Whether a track.json ``protection`` object (absent: clear) was written with these settings."""
        if not isinstance(recorded, dict):
            return not self.enabled
        if list(self.schemes) != recorded.get("schemes"):
            return False
        return not self.enabled or recorded.get("key_scope") == self.key_scope


class TrackKeys(Protocol):
    """Gets (or creates) a track's content keys, one per group."""

    def __call__(self, track: str, groups: Sequence[str]) -> dict[str, ContentKey]: ...


def load_keys_config(path: Path | None, store: Path | None) -> KeysConfig:
    """``[keys]`` from a TOML file (other tables are ignored, so a node's config can be reused),
    with ``store`` (``--keystore``) taking precedence."""
    cfg = KeysConfig()
    if path is not None:
        cfg = load_section(KeysConfig, path, "keys",
                           missing="no [keys] table (store, master_key_file, master_key_env)")
    if store is not None:
        cfg = replace(cfg, store=store)
    return cfg


class KeyStoreKeys:
    """``TrackKeys`` backed by the wrapped key store (see the module docstring).

    Construction opens the store once, so a missing master key, a wrong one
    or an unusable file fails before any track is packaged.  Each call opens
    the store again (a ``KeyStore`` is not thread-safe and ``--jobs`` runs
    tracks in threads); calls are serialised by a lock, and SQLite's own lock
    serialises several packager processes.
    """

    def __init__(self, cfg: KeysConfig) -> None:
        if cfg.store is None:
            raise ConfigError("protected packaging needs a key store: give --keystore PATH or --keys-config FILE "
                              "with [keys] store (or --protect none for clear output)")
        self.path = cfg.store
        self._master = load_master_key(cfg)
        self._lock = threading.Lock()
        with KeyStore.open(self.path, self._master):
            pass

    def __call__(self, track: str, groups: Sequence[str]) -> dict[str, ContentKey]:
        with self._lock, KeyStore.open(self.path, self._master) as ks:
            missing = [g for g in groups if g not in self._oldest(ks, track)]
            for group in missing:
                ks.put(track, new_content_key(), group)
            # Re-read: had another packager stored a key for the same group meanwhile, both runs now
            # agree on the oldest one (for_track orders by creation time, then kid).
            kids = self._oldest(ks, track)
            out: dict[str, ContentKey] = {}
            for group in groups:
                key = ks.get(kids[group])
                if key is None:  # pragma: no cover - for_track and get read the same table
                    raise KeyStoreError(f"key store {self.path}: key {kids[group].hex()} vanished")
                out[group] = key
        return out

    @staticmethod
    def _oldest(ks: KeyStore, track: str) -> dict[str, bytes]:
        """The first key stored for each group of ``track``: the group's key."""
        kids: dict[str, bytes] = {}
        for group, kid in ks.for_track(track):
            kids.setdefault(group, kid)
        return kids
