"""drm.clearkey: the W3C EME ClearKey licence request and licence (JWK set) formats."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drm.clearkey import LicenseRequestError, license_body, parse_request, request_body
from drm.keys import new_content_key
from drm.tokens import b64url_decode, b64url_encode


def test_request_roundtrip_dedupes_in_order() -> None:
    a, b = new_content_key(), new_content_key()
    assert parse_request(request_body([a.kid, b.kid, a.kid])) == [a.kid, b.kid]
    assert json.loads(request_body([a.kid])) == {"kids": [b64url_encode(a.kid)], "type": "temporary"}


def test_licence_is_a_jwk_set() -> None:
    keys = [new_content_key(), new_content_key()]
    licence = json.loads(license_body(keys))
    assert licence["type"] == "temporary"
    for jwk, key in zip(licence["keys"], keys, strict=True):
        assert jwk["kty"] == "oct"
        assert b64url_decode(jwk["kid"]) == key.kid and b64url_decode(jwk["k"]) == key.key


@pytest.mark.parametrize("body", [b"", b"null", b"{}", b'{"kids":null}', b'{"kids":[null]}', b'{"kids":["A"]}',
                                  b'{"kids":["AAAAAAAAAAAAAAAAAAAAAA"],"type":5}', b"[" * 100_000])
def test_bad_requests(body: bytes) -> None:
    with pytest.raises(LicenseRequestError):
        parse_request(body)


@settings(deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=30),
                              lambda c: st.lists(c, max_size=4) | st.dictionaries(
                                  st.sampled_from(("kids", "type", "x")), c, max_size=3),
                              max_leaves=8).map(lambda v: json.dumps(v).encode())))
def test_random_bodies_only_raise_the_documented_error(body: bytes) -> None:
    try:
        kids = parse_request(body)
    except LicenseRequestError as exc:
        assert exc.reason
    else:
        assert kids and all(len(kid) == 16 for kid in kids)
