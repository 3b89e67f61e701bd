"""Common Encryption (ISO/IEC 23001-7), scheme ``cenc``: AES-128-CTR full-sample encryption.

Pure functions of (bytes, key, iv): no files, no clocks, no randomness.  The
boxes that carry the result (``tenc``, ``senc``, ``saiz``, ``saio``,
``pssh``) are written by ``packager.mp4``.

What we use of the standard, for audio:

- every sample is encrypted whole (no subsamples: an audio sample has no
  header a decoder must read in the clear), ISO/IEC 23001-7 §9.5;
- each sample has its own 8-byte IV; the 16-byte counter block is the IV
  followed by a 64-bit block counter that starts at 0 for every sample
  (§9.5.2), so samples never share a counter block as long as their IVs
  differ;
- the IVs of one media segment are consecutive numbers from a base derived
  as in ``drm.aes128.derive_iv`` (a keyed hash of the segment's samples and
  its name), so re-packaging the same bytes is byte-identical and different
  bytes never reuse a counter under the same key.

KIDs are 16 bytes; in MP4 boxes they are raw, in a DASH MPD they are written
in UUID form (``cenc:default_KID``, ISO/IEC 23001-7 §11.2) by :func:`kid_uuid`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from drm.aes128 import KEY_SIZE, Buffer, CryptoError, derive_iv

SCHEME = b"cenc"
SCHEME_VERSION = 0x00010000
IV_SIZE = 8
COMMON_SYSTEM_ID = uuid.UUID("1077efec-c0b2-4d02-ace3-3c1e52e2fb4b")
"""W3C "Common PSSH box" system id (EME initialization data, version 1 with KIDs)."""
CLEARKEY_DASH_UUID = uuid.UUID("e2719d58-a985-b3c9-781a-b030af78d30e")
"""DASH-IF ContentProtection scheme for W3C ClearKey."""

_IV_MOD = 1 << (8 * IV_SIZE)


def _aes(key: bytes) -> algorithms.AES:
    if len(key) != KEY_SIZE:
        raise CryptoError(f"an AES-128 key is {KEY_SIZE} bytes, got {len(key)}")
    return algorithms.AES(key)


def _encrypt(sample: Buffer, aes: algorithms.AES, iv: bytes) -> bytes:
    if len(iv) not in (8, 16):
        raise CryptoError(f"a cenc IV is 8 or 16 bytes, got {len(iv)}")
    enc = Cipher(aes, modes.CTR(iv.ljust(16, b"\0"))).encryptor()
    return enc.update(sample) + enc.finalize()


def encrypt_sample(sample: Buffer, key: bytes, iv: bytes) -> bytes:
    """AES-CTR of one whole sample; the counter block starts at ``iv`` + 64 zero bits.

    CTR is its own inverse, so this also decrypts.
    """
    return _encrypt(sample, _aes(key), iv)


decrypt_sample = encrypt_sample


def sample_ivs(base: bytes, count: int) -> list[bytes]:
    """``count`` consecutive 8-byte IVs starting at ``base`` (wrapping modulo 2**64)."""
    if len(base) != IV_SIZE:
        raise CryptoError(f"a cenc IV is {IV_SIZE} bytes, got {len(base)}")
    start = int.from_bytes(base, "big")
    return [((start + i) % _IV_MOD).to_bytes(IV_SIZE, "big") for i in range(count)]


def encrypt_samples(samples: Sequence[Buffer], key: bytes, context: str) -> tuple[list[bytes], list[bytes]]:
    """Encrypt one segment's samples; returns (encrypted samples, their IVs).

    ``context`` names the segment (e.g. ``"cenc/aac-160k/3"``) for the IV
    derivation (see the module docstring).
    """
    aes = _aes(key)  # one key schedule for the segment
    ivs = sample_ivs(derive_iv(key, context, list(samples), IV_SIZE), len(samples))
    return [_encrypt(s, aes, iv) for s, iv in zip(samples, ivs)], ivs


def kid_uuid(kid: bytes) -> str:
    """A KID in the UUID form DASH uses (``cenc:default_KID``)."""
    if len(kid) != 16:
        raise CryptoError(f"a KID is 16 bytes, got {len(kid)}")
    return str(uuid.UUID(bytes=bytes(kid)))
