"""drm.cenc: AES-CTR full-sample encryption (scheme 'cenc'), against NIST vectors and `openssl enc`."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

from drm import cenc
from drm.aes128 import CryptoError

# NIST SP 800-38A, F.5.1 CTR-AES128.Encrypt
NIST_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
NIST_COUNTER = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
NIST_PLAIN = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172a" "ae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52ef" "f69f2445df4f9b17ad2b417be66c3710")
NIST_CIPHER = bytes.fromhex(
    "874d6191b620e3261bef6864990db6ce" "9806f66b7970fdff8617187bb9fffdff"
    "5ae4df3edbd5d35e5b4f09020db03eab" "1e031dda2fbe03d1792170a0f3009cee")


def test_nist_sp800_38a_ctr_vector_with_a_16_byte_iv() -> None:
    assert cenc.encrypt_sample(NIST_PLAIN, NIST_KEY, NIST_COUNTER) == NIST_CIPHER
    assert cenc.decrypt_sample(NIST_CIPHER, NIST_KEY, NIST_COUNTER) == NIST_PLAIN


def test_partial_last_block_uses_a_prefix_of_the_keystream() -> None:
    assert cenc.encrypt_sample(NIST_PLAIN[:37], NIST_KEY, NIST_COUNTER) == NIST_CIPHER[:37]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")
@pytest.mark.parametrize("size", [1, 16, 371, 4096 * 3 + 5])
def test_8_byte_iv_counter_block_is_iv_then_64_zero_bits(size: int) -> None:
    """ISO/IEC 23001-7 §9.5.2: an 8-byte IV is the high half of the counter block, the block count the low half."""
    key, iv, data = os.urandom(16), os.urandom(8), os.urandom(size)
    ref = subprocess.run(["openssl", "enc", "-aes-128-ctr", "-K", key.hex(), "-iv", (iv + bytes(8)).hex()],
                         input=data, capture_output=True, check=True).stdout
    assert cenc.encrypt_sample(data, key, iv) == ref


def test_sample_ivs_are_consecutive_and_wrap() -> None:
    assert cenc.sample_ivs(bytes(8), 3) == [bytes(8), (1).to_bytes(8, "big"), (2).to_bytes(8, "big")]
    assert cenc.sample_ivs(b"\xff" * 8, 2) == [b"\xff" * 8, bytes(8)]
    with pytest.raises(CryptoError):
        cenc.sample_ivs(bytes(16), 1)


def test_encrypt_samples_round_trip_unique_ivs_and_determinism() -> None:
    key = os.urandom(16)
    samples = [os.urandom(n) for n in (1, 16, 300, 371, 371, 4096)] + [b"same"] * 3
    enc, ivs = cenc.encrypt_samples(samples, key, "cenc/aac-96k/1")
    assert len(ivs) == len(samples) == len(set(ivs)) and {len(iv) for iv in ivs} == {cenc.IV_SIZE}
    assert [len(e) for e in enc] == [len(s) for s in samples]  # no padding in CTR
    assert [cenc.decrypt_sample(e, key, iv) for e, iv in zip(enc, ivs)] == samples
    assert len(set(enc[-3:])) == 3, "equal samples must not encrypt equally"
    assert cenc.encrypt_samples(samples, key, "cenc/aac-96k/1") == (enc, ivs)  # re-packaging is byte-identical
    _, other_ivs = cenc.encrypt_samples(samples, key, "cenc/aac-96k/2")
    assert not set(other_ivs) & set(ivs)
    changed = [b"x" + samples[0], *samples[1:]]
    assert not set(cenc.encrypt_samples(changed, key, "cenc/aac-96k/1")[1]) & set(ivs), \
        "new bytes under the same key and name must get new counters"
    assert cenc.encrypt_samples(samples, key, "cenc/aac-96k/1")[0] != cenc.encrypt_samples(samples, os.urandom(16),
                                                                                            "cenc/aac-96k/1")[0]


def test_kid_uuid_form() -> None:
    kid = bytes.fromhex("00112233445566778899aabbccddeeff")
    assert cenc.kid_uuid(kid) == "00112233-4455-6677-8899-aabbccddeeff"
    assert uuid.UUID(cenc.kid_uuid(kid)).bytes == kid
    with pytest.raises(CryptoError):
        cenc.kid_uuid(b"short")


@pytest.mark.parametrize(("key", "iv"), [(b"k" * 15, b"i" * 8), (b"k" * 16, b"i" * 12), (b"k" * 16, b"")])
def test_bad_key_or_iv_size(key: bytes, iv: bytes) -> None:
    with pytest.raises(CryptoError):
        cenc.encrypt_sample(b"x", key, iv)


def test_system_ids() -> None:
    assert str(cenc.COMMON_SYSTEM_ID) == "1077efec-c0b2-4d02-ace3-3c1e52e2fb4b"
    assert str(cenc.CLEARKEY_DASH_UUID) == "e2719d58-a985-b3c9-781a-b030af78d30e"
