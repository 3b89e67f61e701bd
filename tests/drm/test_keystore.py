"""drm.keys: content keys and the wrapped SQLite key store, on real files."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import pytest
from servers import child_process_args

from drm.keys import ContentKey, KeyStore, KeyStoreError, new_content_key, parse_kid

REPO = Path(__file__).resolve().parents[2]
MASTER = bytes(range(32))
OTHER_MASTER = bytes(range(1, 33))


def files_bytes(db: Path) -> bytes:
    """Every byte SQLite keeps for ``db`` (the file, its WAL and shared memory)."""
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


def test_content_key_shape_and_repr_hides_the_key() -> None:
    key = new_content_key()
    assert len(key.kid) == 16 and len(key.key) == 16
    assert key.kid_hex == key.kid.hex() and len(key.kid_hex) == 32
    assert key.key.hex() not in repr(key) and key.kid_hex in repr(key)
    assert key.key.hex() not in str(key)
    assert new_content_key() != key
    with pytest.raises(ValueError):
        ContentKey(b"short", b"\0" * 16)
    with pytest.raises(ValueError):
        ContentKey(b"\0" * 16, b"\0" * 15)


def test_parse_kid_accepts_hex_and_uuid_form() -> None:
    kid = os.urandom(16)
    assert parse_kid(kid.hex()) == kid
    assert parse_kid(kid.hex().upper()) == kid
    uuid_form = f"{kid.hex()[:8]}-{kid.hex()[8:12]}-{kid.hex()[12:16]}-{kid.hex()[16:20]}-{kid.hex()[20:]}"
    assert parse_kid(uuid_form) == kid
    for bad in ("", "abc", "zz" * 16, kid.hex() + "00"):
        with pytest.raises(ValueError):
            parse_kid(bad)


def test_put_get_for_track_and_persistence(tmp_path: Path) -> None:
    db = tmp_path / "keys.sqlite"
    k1, k2, k3 = new_content_key(), new_content_key(), new_content_key()
    with KeyStore.open(db, MASTER) as ks:
        ks.put("sunrise", k1)
        ks.put("sunrise", k2, "flac")
        ks.put("dusk", k3)
        ks.put("sunrise", k1)  # same key, same owner: a no-op
        assert ks.get(k1.kid) == k1
        assert ks.get(os.urandom(16)) is None
        assert len(ks) == 3
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    with KeyStore.open(db, MASTER, create=False) as ks:
        assert ks.get(k2.kid) == k2
        entry = ks.entry(k2.kid)
        assert entry is not None and (entry.track, entry.group, entry.key) == ("sunrise", "flac", k2)
        assert sorted(ks.for_track("sunrise")) == sorted([("", k1.kid), ("flac", k2.kid)])
        assert ks.for_track("dusk") == [("", k3.kid)]
        assert ks.for_track("nothing") == []
        assert ks.tracks() == ["dusk", "sunrise"]


def test_neither_master_nor_content_keys_are_in_the_file(tmp_path: Path) -> None:
    db = tmp_path / "keys.sqlite"
    keys = [new_content_key() for _ in range(5)]
    with KeyStore.open(db, MASTER) as ks:
        for i, key in enumerate(keys):
            ks.put(f"t{i}", key)
        raw = files_bytes(db)
    assert MASTER not in raw
    for key in keys:
        assert key.key not in raw
        assert key.kid in raw  # KIDs are public and indexed


def test_a_kid_belongs_to_one_key_and_owner(tmp_path: Path) -> None:
    key = new_content_key()
    with KeyStore.open(tmp_path / "k.sqlite", MASTER) as ks:
        ks.put("a", key)
        with pytest.raises(KeyStoreError, match="already used by track 'a'"):
            ks.put("b", key)
        with pytest.raises(KeyStoreError, match="already used"):
            ks.put("a", ContentKey(key.kid, os.urandom(16)))
        with pytest.raises(KeyStoreError, match="already used"):
            ks.put("a", key, "flac")
        assert ks.get(key.kid) == key and len(ks) == 1


def test_wrong_master_key_is_refused_at_open_without_leaking(tmp_path: Path) -> None:
    db = tmp_path / "k.sqlite"
    with KeyStore.open(db, MASTER) as ks:
        ks.put("a", new_content_key())
    with pytest.raises(KeyStoreError, match="master key does not match") as err:
        KeyStore.open(db, OTHER_MASTER)
    message = str(err.value)
    assert str(db) in message
    for secret in (MASTER, OTHER_MASTER):
        assert secret.hex() not in message and repr(secret) not in message
    with pytest.raises(KeyStoreError, match="32 bytes"):
        KeyStore.open(db, b"too short")


def test_corrupt_file_is_a_clear_error_and_is_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "k.sqlite"
    garbage = os.urandom(8192)
    db.write_bytes(garbage)
    with pytest.raises(KeyStoreError, match=r"not a usable SQLite key store"):
        KeyStore.open(db, MASTER)
    assert db.read_bytes() == garbage


def test_truncated_store_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "k.sqlite"
    with KeyStore.open(db, MASTER) as ks:
        for i in range(200):
            ks.put(f"t{i}", new_content_key())
    with sqlite3.connect(db) as conn:  # fold the WAL into the main file, then cut it
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    with pytest.raises(KeyStoreError, match=str(db)), KeyStore.open(db, MASTER) as ks:
        for track in (f"t{i}" for i in range(200)):
            for _, kid in ks.for_track(track):
                ks.get(kid)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="no such file"):
        KeyStore.open(tmp_path / "absent.sqlite", MASTER, create=False)
    assert not (tmp_path / "absent.sqlite").exists()
    with pytest.raises(KeyStoreError, match="directory .* does not exist"):
        KeyStore.open(tmp_path / "no" / "dir" / "k.sqlite", MASTER)
    with pytest.raises(KeyStoreError, match="is a directory"):
        KeyStore.open(tmp_path, MASTER)


def test_edited_rows_do_not_unwrap(tmp_path: Path) -> None:
    """A row moved to another track, or with flipped bits, never yields a key."""
    db = tmp_path / "k.sqlite"
    a, b = new_content_key(), new_content_key()
    with KeyStore.open(db, MASTER) as ks:
        ks.put("a", a)
        ks.put("b", b)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE keys SET track = 'b' WHERE kid = ?", (a.kid,))
        wrapped = conn.execute("SELECT wrapped FROM keys WHERE kid = ?", (b.kid,)).fetchone()[0]
        conn.execute("UPDATE keys SET wrapped = ? WHERE kid = ?",
                     (wrapped[:-1] + bytes([wrapped[-1] ^ 1]), b.kid))
    with KeyStore.open(db, MASTER) as ks:
        for kid in (a.kid, b.kid):
            with pytest.raises(KeyStoreError, match="does not unwrap") as err:
                ks.get(kid)
            assert a.key.hex() not in str(err.value) and b.key.hex() not in str(err.value)


def test_rotate_master_rewraps_everything(tmp_path: Path) -> None:
    db = tmp_path / "k.sqlite"
    keys = {f"t{i}": new_content_key() for i in range(20)}
    with KeyStore.open(db, MASTER) as ks:
        for track, key in keys.items():
            ks.put(track, key)
        before = files_bytes(db)
        assert ks.rotate_master(OTHER_MASTER) == 20
        assert ks.get(keys["t3"].kid) == keys["t3"]  # the open store now uses the new key
    with pytest.raises(KeyStoreError, match="does not match"):
        KeyStore.open(db, MASTER)
    with KeyStore.open(db, OTHER_MASTER) as ks:
        assert {t: ks.get(k.kid) for t, k in keys.items()} == keys
    assert OTHER_MASTER not in files_bytes(db) and MASTER not in before


def test_rotation_with_a_damaged_row_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "k.sqlite"
    good, bad = new_content_key(), new_content_key()
    with KeyStore.open(db, MASTER) as ks:
        ks.put("good", good)
        ks.put("bad", bad)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE keys SET wrapped = zeroblob(44) WHERE kid = ?", (bad.kid,))
        rows_before = conn.execute("SELECT * FROM keys ORDER BY kid").fetchall()
    with KeyStore.open(db, MASTER) as ks:
        with pytest.raises(KeyStoreError, match=f"{bad.kid_hex} of track 'bad' does not unwrap"):
            ks.rotate_master(OTHER_MASTER)
        assert ks.get(good.kid) == good  # still works with the old master key
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT * FROM keys ORDER BY kid").fetchall() == rows_before
    with pytest.raises(KeyStoreError, match="does not match"):
        KeyStore.open(db, OTHER_MASTER)


# ---------------------------------------------------------------- concurrent writers

WRITERS = 4
KEYS_PER_WRITER = 40


def key_for(writer: int, i: int) -> ContentKey:
    """Deterministic keys so the parent can check what every child wrote."""
    digest = hashlib.sha256(f"{writer}/{i}".encode()).digest()
    return ContentKey(digest[:16], digest[16:])


def _child(argv: list[str]) -> None:
    db, writer = Path(argv[0]), int(argv[1])
    for i in range(KEYS_PER_WRITER):  # one open per write, as separate packager runs would
        with KeyStore.open(db, MASTER) as ks:
            ks.put(f"w{writer}", key_for(writer, i), f"g{i % 3}")
            ks.put("shared", key_for(99, i))  # every writer races to put the same keys


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    db = tmp_path / "k.sqlite"
    procs = []
    try:
        for w in range(WRITERS):
            argv, env = child_process_args(str(Path(__file__)), str(db), str(w))
            procs.append(subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + 120
        for proc in procs:
            _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    with KeyStore.open(db, MASTER, create=False) as ks:
        assert len(ks) == WRITERS * KEYS_PER_WRITER + KEYS_PER_WRITER
        for w in range(WRITERS):
            assert len(ks.for_track(f"w{w}")) == KEYS_PER_WRITER
            for i in range(KEYS_PER_WRITER):
                assert ks.get(key_for(w, i).kid) == key_for(w, i)
        assert {kid for _, kid in ks.for_track("shared")} == {key_for(99, i).kid for i in range(KEYS_PER_WRITER)}
