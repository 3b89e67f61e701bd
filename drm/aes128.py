"""HLS AES-128: whole-segment AES-128-CBC with PKCS#7 padding (RFC 8216 §5.2).

Pure functions of (bytes, key, iv): no files, no clocks, no randomness.  The
block cipher is the ``cryptography`` package's (OpenSSL); this module only
fixes the mode, the padding and how IVs are chosen.

IVs (``derive_iv``) are a keyed hash of what they encrypt: HMAC-SHA-256 keyed
with the content key over a context label (which segment of which rendition
under which scheme) and the plaintext itself, cut to the IV size.  So

- every segment gets its own IV (no IV is reused under a key, even when two
  segments happen to be byte-identical: the label differs);
- re-packaging the same bytes gives the same IV, hence the same ciphertext,
  which is what lets caches keep an immutable segment across a ``--force``
  re-run;
- re-packaging *different* bytes under the same key (a new master, another
  ffmpeg) gives different IVs, so AES-CTR (``drm.cenc``) never sees a counter
  twice and CBC never repeats an IV.  This is the SIV construction (RFC 5297
  §2.6) used only for the IV; the IV itself is public (it is written in the
  playlist and in ``senc``) and says nothing about the key.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 16
KEY_SIZE = 16
IV_SIZE = 16

Buffer = bytes | bytearray | memoryview


class CryptoError(ValueError):
    """Bad key, IV or ciphertext (never says anything about the key's value)."""


def _check(key: Buffer, iv: Buffer, iv_size: int = IV_SIZE) -> None:
    if len(key) != KEY_SIZE:
        raise CryptoError(f"an AES-128 key is {KEY_SIZE} bytes, got {len(key)}")
    if len(iv) != iv_size:
        raise CryptoError(f"the IV must be {iv_size} bytes, got {len(iv)}")


def encrypt_cbc(plaintext: Buffer, key: bytes, iv: bytes) -> bytes:
    """AES-128-CBC of ``plaintext`` padded with PKCS#7 (always 1 to 16 bytes of padding)."""
    _check(key, iv)
    padder = padding.PKCS7(BLOCK * 8).padder()
    padded = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return enc.update(padded) + enc.finalize()


def decrypt_cbc(ciphertext: Buffer, key: bytes, iv: bytes) -> bytes:
    """Inverse of :func:`encrypt_cbc`; ``CryptoError`` when the length or padding is wrong."""
    _check(key, iv)
    if not ciphertext or len(ciphertext) % BLOCK:
        raise CryptoError(f"ciphertext length {len(ciphertext)} is not a positive multiple of {BLOCK}")
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = dec.update(ciphertext) + dec.finalize()
    unpadder = padding.PKCS7(BLOCK * 8).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise CryptoError("bad PKCS#7 padding (wrong key or IV, or damaged data)") from None


def derive_iv(key: bytes, context: str, data: Buffer | list[Buffer] | tuple[Buffer, ...], size: int = IV_SIZE) -> bytes:
    """The IV for encrypting ``data`` (one buffer or a sequence of them) under ``key``.

    ``context`` names the object (e.g. ``"hls-aes128/aac-160k/3"``); see the
    module docstring for why the IV depends on both.
    """
    if len(key) != KEY_SIZE:
        raise CryptoError(f"an AES-128 key is {KEY_SIZE} bytes, got {len(key)}")
    if not 1 <= size <= hashlib.sha256().digest_size:
        raise CryptoError(f"IV size {size} out of range")
    label = context.encode()
    mac = hmac.new(key, b"legato-iv\0" + len(label).to_bytes(4, "big") + label, hashlib.sha256)
    for part in (data if isinstance(data, (list, tuple)) else (data,)):
        mac.update(part)
    return mac.digest()[:size]
