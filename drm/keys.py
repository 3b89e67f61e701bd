"""Content keys and the wrapped key store.

A content key is a random 128-bit AES key with a random 128-bit key id
(KID); the KID is public (it is written into manifests, ``tenc`` boxes and
the URL ``/keys/{kid}``), the key is secret.  ``ContentKey`` never shows its
key in ``repr``.

The key store is one SQLite file kept *outside* the served store tree.  It
never holds a usable key: every content key is wrapped (AES-256-GCM) with a
master key that comes from a file or environment variable (drm.config),
never from the store itself.

Layout (schema version 1)::

    meta(name TEXT PRIMARY KEY, value BLOB)
        'schema'  -> b'1'
        'check'   -> nonce(12) || AES-GCM(master, b'legato key store', aad=CHECK_AAD)
    keys(kid BLOB PRIMARY KEY (16 bytes), track TEXT, grp TEXT, wrapped BLOB, created REAL)
        wrapped   =  nonce(12) || AES-GCM(master, key, aad=b'legato/key/v1' 0 kid 0 track 0 group)

The ``check`` record tells a wrong master key apart from a damaged row: a
store opened with the wrong master key fails at open with ``KeyStoreError``
("does not match"), not later at the first key request.  The associated
data binds each wrapped key to its kid, track and group, so moving a row to
another track (by editing the file) makes it fail to unwrap rather than
hand one track's key to another track's listeners.

Why AES-GCM and not RFC 3394 key wrap: both are in ``cryptography``; GCM
takes associated data (the binding above), key wrap does not.  A random
96-bit nonce per wrap is safe far beyond any catalogue size (NIST's 2^32
messages per key).

Writes are single SQLite transactions (``BEGIN IMMEDIATE``), so a reader
never sees half of one and two packagers writing at once simply queue on
SQLite's lock (WAL journal, ``busy_timeout``).  ``rotate_master`` re-wraps
every key in one transaction and unwraps them all again with the new key
before committing.

The store's directory must exist; the file is created with mode 0600 when
``create`` is true (the packager) and must already exist otherwise (the
origin's key service: a missing store is a configuration error, not an
empty one).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KID_BYTES = 16
KEY_BYTES = 16
MASTER_KEY_BYTES = 32
NONCE_BYTES = 12
SCHEMA = b"1"
CHECK_PLAINTEXT = b"legato key store"
CHECK_AAD = b"legato/check/v1"
BUSY_TIMEOUT_S = 30.0


class KeyStoreError(Exception):
    """A key store problem; the message names the file and never holds key material."""


@dataclass(frozen=True, slots=True, repr=False)
class ContentKey:
    """A 128-bit content key and its 128-bit key id."""

    kid: bytes
    key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.kid, bytes) or len(self.kid) != KID_BYTES:
            raise ValueError(f"kid must be {KID_BYTES} bytes")
        if not isinstance(self.key, bytes) or len(self.key) != KEY_BYTES:
            raise ValueError(f"content key must be {KEY_BYTES} bytes")

    @property
    def kid_hex(self) -> str:
        """The KID as 32 lowercase hex digits (URLs, manifests, ``legato keys show``)."""
        return self.kid.hex()

    def __repr__(self) -> str:
        return f"ContentKey(kid={self.kid_hex}, key=<hidden>)"


def new_content_key() -> ContentKey:
    """A fresh random key and key id from the OS CSPRNG."""
    return ContentKey(os.urandom(KID_BYTES), os.urandom(KEY_BYTES))


def parse_kid(text: str) -> bytes:
    """32 hex digits (any case, optional dashes as in UUID form) -> 16 bytes; ValueError otherwise."""
    digits = text.replace("-", "")
    if len(digits) != 2 * KID_BYTES:
        raise ValueError(f"a key id is {2 * KID_BYTES} hex digits, got {len(digits)}")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise ValueError("a key id is hex digits only") from None


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A key as the store holds it: which track and group own it."""

    track: str
    group: str
    key: ContentKey


def _key_aad(kid: bytes, track: str, group: str) -> bytes:
    return b"legato/key/v1\0" + kid + b"\0" + track.encode() + b"\0" + group.encode()


def _wrap(master: AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + master.encrypt(nonce, plaintext, aad)


def _unwrap(master: AESGCM, blob: bytes, aad: bytes) -> bytes:
    """Raises InvalidTag (wrong key or tampered) or ValueError (wrong shape)."""
    if not isinstance(blob, bytes) or len(blob) < NONCE_BYTES + 16:
        raise ValueError("wrapped value too short")
    return master.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)


def _aead(master: bytes) -> AESGCM:
    if not isinstance(master, bytes) or len(master) != MASTER_KEY_BYTES:
        raise KeyStoreError(f"the master key must be {MASTER_KEY_BYTES} bytes")
    return AESGCM(master)


class KeyStore:
    """Wrapped content keys in one SQLite file; see the module docstring.

    ``with KeyStore.open(path, master) as ks: ks.put(track, key, group)``.
    One instance per process (and per worker after fork); not thread-safe.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, master: AESGCM) -> None:
        self.path = path
        self._conn = conn
        self._master = master

    # -------------------------------------------------------------- opening

    @classmethod
    def open(cls, path: Path | str, master: bytes, *, create: bool = True) -> KeyStore:
        """Open (and with ``create``, make) the store at ``path``, checking ``master`` against it."""
        path = Path(path)
        aead = _aead(master)
        if not path.parent.is_dir():
            raise KeyStoreError(f"key store {path}: directory {path.parent} does not exist")
        if path.is_dir():
            raise KeyStoreError(f"key store {path}: is a directory")
        if not path.exists():
            if not create:
                raise KeyStoreError(f"key store {path}: no such file (package a protected track first, "
                                    "or fix [keys] store)")
            try:  # 0600 from birth; SQLite gives its -wal/-shm files the same mode
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            except FileExistsError:
                pass  # another writer created it first: fine
            except OSError as exc:
                raise KeyStoreError(f"key store {path}: cannot create: {exc.strerror}") from None
        try:
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise KeyStoreError(f"key store {path}: cannot open: {exc}") from None
        store = cls(path, conn, aead)
        try:
            store._setup()
        except BaseException:
            conn.close()
            raise
        return store

    def _setup(self) -> None:
        conn = self._conn
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            with self._write():
                conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS keys ("
                    " kid BLOB PRIMARY KEY CHECK (length(kid) = 16),"
                    " track TEXT NOT NULL, grp TEXT NOT NULL DEFAULT '',"
                    " wrapped BLOB NOT NULL, created REAL NOT NULL)")
                conn.execute("CREATE INDEX IF NOT EXISTS keys_by_track ON keys (track, grp)")
                meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
                if "schema" not in meta:
                    conn.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA,))
                elif bytes(meta["schema"]) != SCHEMA:
                    raise KeyStoreError(f"key store {self.path}: schema {bytes(meta['schema'])!r} "
                                        f"is not the supported {SCHEMA!r}")
                if "check" not in meta:
                    conn.execute("INSERT INTO meta VALUES ('check', ?)",
                                 (_wrap(self._master, CHECK_PLAINTEXT, CHECK_AAD),))
                    return
            self._check(self._master, meta["check"])
        except sqlite3.DatabaseError as exc:
            raise KeyStoreError(f"key store {self.path}: not a usable SQLite key store ({exc})") from None

    def _check(self, master: AESGCM, check: object) -> None:
        try:
            ok = isinstance(check, bytes) and _unwrap(master, check, CHECK_AAD) == CHECK_PLAINTEXT
        except (InvalidTag, ValueError):
            ok = False
        if not ok:
            raise KeyStoreError(f"key store {self.path}: the master key does not match this store "
                                "(wrong key file or variable, or the store was re-wrapped with another key)")

    class _Tx:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception)."""

        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> None:
            self.conn.execute("BEGIN IMMEDIATE")

        def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
            if exc_type is None:
                try:
                    self.conn.execute("COMMIT")
                    return
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
            self.conn.execute("ROLLBACK")

    def _write(self) -> KeyStore._Tx:
        return KeyStore._Tx(self._conn)

    # -------------------------------------------------------------- context manager

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -------------------------------------------------------------- keys

    def put(self, track: str, key: ContentKey, group: str = "") -> None:
        """Store ``key`` for ``track`` (and rendition ``group``), wrapped, in one transaction.

        Putting the same key again for the same owner is a no-op; a KID that
        already belongs to another key, track or group is refused.
        """
        if not track:
            raise KeyStoreError(f"key store {self.path}: a key needs a track id")
        try:
            with self._write():
                row = self._conn.execute("SELECT track, grp, wrapped FROM keys WHERE kid = ?",
                                         (key.kid,)).fetchone()
                if row is not None:
                    same = (row[0], row[1]) == (track, group) and self._unwrap_row(key.kid, *row) == key.key
                    if not same:
                        raise KeyStoreError(f"key store {self.path}: key id {key.kid_hex} is already used "
                                            f"by track {row[0]!r}")
                    return
                self._conn.execute(
                    "INSERT INTO keys (kid, track, grp, wrapped, created) VALUES (?, ?, ?, ?, ?)",
                    (key.kid, track, group,
                     _wrap(self._master, key.key, _key_aad(key.kid, track, group)), time.time()))
        except sqlite3.DatabaseError as exc:
            raise KeyStoreError(f"key store {self.path}: cannot write: {exc}") from None

    def _unwrap_row(self, kid: bytes, track: str, group: str, wrapped: bytes,
                    master: AESGCM | None = None) -> bytes:
        try:
            key = _unwrap(master or self._master, wrapped, _key_aad(kid, track, group))
        except (InvalidTag, ValueError):
            raise KeyStoreError(f"key store {self.path}: key {kid.hex()} of track {track!r} does not "
                                "unwrap (damaged or edited row)") from None
        if len(key) != KEY_BYTES:
            raise KeyStoreError(f"key store {self.path}: key {kid.hex()} has the wrong length")
        return key

    def entry(self, kid: bytes) -> StoredKey | None:
        """The key with id ``kid`` and who owns it, or None."""
        try:
            row = self._conn.execute("SELECT track, grp, wrapped FROM keys WHERE kid = ?", (kid,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise KeyStoreError(f"key store {self.path}: cannot read: {exc}") from None
        if row is None:
            return None
        track, group, wrapped = row
        return StoredKey(track, group, ContentKey(kid, self._unwrap_row(kid, track, group, wrapped)))

    def get(self, kid: bytes) -> ContentKey | None:
        """The content key with id ``kid``, or None."""
        stored = self.entry(kid)
        return None if stored is None else stored.key

    def for_track(self, track: str) -> list[tuple[str, bytes]]:
        """(group, kid) of every key of ``track``, oldest first (no key material)."""
        try:
            rows = self._conn.execute("SELECT grp, kid FROM keys WHERE track = ? ORDER BY created, grp, kid",
                                      (track,)).fetchall()
        except sqlite3.DatabaseError as exc:
            raise KeyStoreError(f"key store {self.path}: cannot read: {exc}") from None
        return [(group, bytes(kid)) for group, kid in rows]

    def tracks(self) -> list[str]:
        """Every track id with at least one key, sorted."""
        try:
            return [r[0] for r in self._conn.execute("SELECT DISTINCT track FROM keys ORDER BY track")]
        except sqlite3.DatabaseError as exc:
            raise KeyStoreError(f"key store {self.path}: cannot read: {exc}") from None

    def __len__(self) -> int:
        try:
            return int(self._conn.execute("SELECT count(*) FROM keys").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise KeyStoreError(f"key store {self.path}: cannot read: {exc}") from None

    def _rows(self) -> Iterator[tuple[bytes, str, str, bytes]]:
        for kid, track, group, wrapped in self._conn.execute("SELECT kid, track, grp, wrapped FROM keys"):
            yield bytes(kid), track, group, bytes(wrapped)

    # -------------------------------------------------------------- master key rotation

    def rotate_master(self, new_master: bytes) -> int:
        """Re-wrap every key with ``new_master`` in one transaction; returns the number of keys.

        Every key is unwrapped with the current master key first (a damaged
        row aborts the rotation, nothing changes), and every re-wrapped key
        is unwrapped again with the new one before the commit.
        """
        new = _aead(new_master)
        try:
            with self._write():
                rows = list(self._rows())
                rewrapped = []
                for kid, track, group, wrapped in rows:
                    key = self._unwrap_row(kid, track, group, wrapped)
                    rewrapped.append((kid, track, group, _wrap(new, key, _key_aad(kid, track, group)), key))
                check = _wrap(new, CHECK_PLAINTEXT, CHECK_AAD)
                for kid, track, group, blob, key in rewrapped:
                    if self._unwrap_row(kid, track, group, blob, new) != key:  # pragma: no cover - AES-GCM roundtrip
                        raise KeyStoreError(f"key store {self.path}: re-wrapped key {kid.hex()} does not verify")
                    self._conn.execute("UPDATE keys SET wrapped = ? WHERE kid = ?", (blob, kid))
                self._check(new, check)
                self._conn.execute("UPDATE meta SET value = ? WHERE name = 'check'", (check,))
                # read back what will be committed: every row must open with the new key
                for kid, track, group, wrapped in self._rows():
                    self._unwrap_row(kid, track, group, wrapped, new)
        except sqlite3.DatabaseError as exc:
            raise KeyStoreError(f"key store {self.path}: cannot rotate: {exc}") from None
        self._master = new
        return len(rows)
