"""drm.aes128: whole-segment AES-128-CBC with PKCS#7, against NIST vectors and `openssl enc`."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from drm import aes128

# NIST SP 800-38A, F.2.1 CBC-AES128.Encrypt
NIST_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
NIST_IV = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
NIST_PLAIN = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172a" "ae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52ef" "f69f2445df4f9b17ad2b417be66c3710")
NIST_CIPHER = bytes.fromhex(
    "7649abac8119b246cee98e9b12e9197d" "5086cb9b507219ee95db113a917678b2"
    "73bed6b8e3c1743b7116e69e22229516" "3ff1caa1681fac09120eca307586e1a7")


def test_nist_sp800_38a_cbc_vector() -> None:
    out = aes128.encrypt_cbc(NIST_PLAIN, NIST_KEY, NIST_IV)
    # four full blocks, then one whole block of PKCS#7 padding (RFC 8216 §5.2 pads every segment)
    assert out[:64] == NIST_CIPHER and len(out) == 80
    assert aes128.decrypt_cbc(out, NIST_KEY, NIST_IV) == NIST_PLAIN


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 31, 32, 33, 1000, 65536 + 7])
def test_pkcs7_padding_and_round_trip(size: int) -> None:
    key, iv, data = os.urandom(16), os.urandom(16), os.urandom(size)
    out = aes128.encrypt_cbc(data, key, iv)
    assert len(out) == (size // 16 + 1) * 16  # always 1..16 bytes of padding
    assert aes128.decrypt_cbc(out, key, iv) == data
    assert aes128.decrypt_cbc(memoryview(out), key, iv) == data


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")
@pytest.mark.parametrize("size", [1, 16, 4095, 70_001])
def test_matches_openssl_enc(size: int) -> None:
    """`openssl enc -aes-128-cbc` pads with PKCS#7 too: the bytes must be identical."""
    key, iv, data = os.urandom(16), os.urandom(16), os.urandom(size)
    ref = subprocess.run(["openssl", "enc", "-aes-128-cbc", "-K", key.hex(), "-iv", iv.hex()],
                         input=data, capture_output=True, check=True).stdout
    assert aes128.encrypt_cbc(data, key, iv) == ref


def test_wrong_key_is_a_padding_error_or_garbage() -> None:
    key, iv, data = os.urandom(16), os.urandom(16), os.urandom(1000)
    out = aes128.encrypt_cbc(data, key, iv)
    try:
        assert aes128.decrypt_cbc(out, os.urandom(16), iv) != data
    except aes128.CryptoError as exc:
        assert "padding" in str(exc)


@pytest.mark.parametrize(("key", "iv"), [(b"k" * 15, b"i" * 16), (b"k" * 32, b"i" * 16), (b"k" * 16, b"i" * 8)])
def test_bad_key_or_iv_size(key: bytes, iv: bytes) -> None:
    with pytest.raises(aes128.CryptoError) as info:
        aes128.encrypt_cbc(b"x", key, iv)
    assert key.hex() not in str(info.value)


@pytest.mark.parametrize("length", [0, 15, 17])
def test_ciphertext_of_bad_length(length: int) -> None:
    with pytest.raises(aes128.CryptoError, match="multiple of 16"):
        aes128.decrypt_cbc(b"\0" * length, b"k" * 16, b"i" * 16)


def test_derive_iv_is_deterministic_and_separates_contexts_and_data() -> None:
    key = os.urandom(16)
    a = aes128.derive_iv(key, "hls-aes128/aac-96k/1", b"segment")
    assert len(a) == 16 and a == aes128.derive_iv(key, "hls-aes128/aac-96k/1", b"segment")
    assert a == aes128.derive_iv(key, "hls-aes128/aac-96k/1", [b"seg", memoryview(b"ment")])  # parts concatenate
    others = {
        aes128.derive_iv(key, "hls-aes128/aac-96k/2", b"segment"),  # same bytes, another segment
        aes128.derive_iv(key, "hls-aes128/aac-96k/1", b"segmenT"),  # same segment, other bytes
        aes128.derive_iv(os.urandom(16), "hls-aes128/aac-96k/1", b"segment"),  # other key
    }
    assert a not in others and len(others) == 3
    assert len(aes128.derive_iv(key, "x", b"", 8)) == 8
    with pytest.raises(aes128.CryptoError):
        aes128.derive_iv(b"short", "x", b"")
