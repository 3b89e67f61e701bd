"""W3C EME ClearKey licence exchange (pure: bytes in, bytes out).

A browser's ClearKey CDM sends a *licence request*, a UTF-8 JSON object
(W3C Encrypted Media Extensions, "Clear Key" license request format)::

    {"kids": ["<base64url kid>", ...], "type": "temporary"}

and expects a *licence*, a JSON Web Key set (RFC 7517) of symmetric keys::

    {"keys": [{"kty": "oct", "kid": "<base64url kid>", "k": "<base64url key>"}, ...],
     "type": "temporary"}

base64url is without padding (RFC 7515 §2); some players pad anyway, so
padding is tolerated on input and never written.  Only ``temporary``
sessions exist here: a licence that outlives its session token would
defeat short-lived tokens, so ``persistent-license`` is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from drm.keys import KID_BYTES, ContentKey
from drm.tokens import b64url_decode, b64url_encode

MAX_KIDS = 64
"""KIDs one request may name (a track has one per rendition group at most)."""
SESSION_TYPE = "temporary"


class LicenseRequestError(ValueError):
    """A licence request that is not one; ``reason`` is short and safe to send back."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_kid(text: object) -> bytes:
    """A base64url KID (padding tolerated) -> 16 bytes; LicenseRequestError otherwise."""
    if not isinstance(text, str):
        raise LicenseRequestError("kids must be base64url strings")
    try:
        kid = b64url_decode(text.rstrip("="))
    except ValueError:
        raise LicenseRequestError("a kid is not base64url") from None
    if len(kid) != KID_BYTES:
        raise LicenseRequestError(f"a kid is {KID_BYTES} bytes, got {len(kid)}")
    return kid


def parse_request(body: bytes) -> list[bytes]:
    """The KIDs a licence request asks for (de-duplicated, in order); LicenseRequestError if malformed."""
    try:
        request = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise LicenseRequestError("body is not JSON") from None
    if not isinstance(request, dict):
        raise LicenseRequestError("body is not a JSON object")
    session_type = request.get("type", SESSION_TYPE)
    if session_type != SESSION_TYPE:
        raise LicenseRequestError("only 'temporary' licences are issued")
    kids = request.get("kids")
    if not isinstance(kids, list) or not kids:
        raise LicenseRequestError("'kids' must be a non-empty array")
    if len(kids) > MAX_KIDS:
        raise LicenseRequestError(f"more than {MAX_KIDS} kids")
    return list(dict.fromkeys(parse_kid(kid) for kid in kids))


def license_body(keys: Iterable[ContentKey]) -> bytes:
    """The JWK set answering a request, for ``keys``."""
    jwks = [{"kty": "oct", "kid": b64url_encode(key.kid), "k": b64url_encode(key.key)} for key in keys]
    return json.dumps({"keys": jwks, "type": SESSION_TYPE}, separators=(",", ":")).encode("ascii")


def request_body(kids: Iterable[bytes]) -> bytes:
    """A licence request for ``kids`` (what a CDM sends; for tests and benchmarks)."""
    return json.dumps({"kids": [b64url_encode(kid) for kid in kids], "type": SESSION_TYPE}).encode("ascii")
