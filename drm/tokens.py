"""Short-lived session tokens: issue and verify (pure; ``now`` is an argument).

A token says "this user's listening session may fetch the keys of these
tracks until this time (from this address)".  The issuing backend signs it
with an Ed25519 private key; edges and the key service hold only public
keys, so a stolen edge cannot mint tokens.

Format (version 1), four dot-separated ASCII fields, URL-safe as it stands
(alphabet ``A-Z a-z 0-9 - _ .``: never ``&``, ``=``, ``+``, ``/`` or ``%``)::

    v1.{key_id}.{claims}.{signature}

    key_id     the signing key's id, [A-Za-z0-9_-]{1,32} (picks the public key;
               several are accepted at once while keys rotate)
    claims     base64url, no padding, of a UTF-8 JSON object:
                 "sub"  user (string)            "sid" session id (string)
                 "trk"  track ids (non-empty array of strings)
                 "iat"  issued at    "nbf" not before    "exp" expires
                        (integer Unix seconds)
                 "ip"   client address the token is bound to (optional string)
               unknown members are ignored (room for later claims)
    signature  base64url, no padding, of the 64-byte Ed25519 signature of the
               ASCII bytes "v1.{key_id}.{claims}" (everything before the last dot)

Example: ``v1.k1.eyJzdWIiOiJhbGljZSIsInNpZCI6...`` (about 250 characters for
one track).  Decoding is strict: base64url must be canonical (no padding, no
stray bits, no other alphabet), so one token has exactly one spelling, and
the whole token is capped at ``MAX_TOKEN_CHARS``.  There is no algorithm
field to confuse: ``v1`` means Ed25519, and anything else (a JWT, ``v2``) is
``malformed``.

Verification order, and the reason each failure reports (``TokenError``):

=====================  ======  =============================================
reason                 status  when
=====================  ======  =============================================
``missing``            401     no token at all (None or empty)
``malformed``          401     not four fields, bad base64url, not version 1,
                               bad key id, claims not a JSON object of the
                               right types (checked after the signature)
``unknown signing      401     key id not among the verifier's public keys
key``
``bad signature``      401     the Ed25519 signature does not verify
``not yet valid``      401     ``now < nbf - skew``
``expired``            401     ``now >= exp + skew``
``wrong track``        403     ``track`` given and not among the claims' tracks
``wrong address``      403     the token is bound, ``client_ip`` is given and
                               is another address (IPv4-mapped IPv6 equals
                               its IPv4 form)
=====================  ======  =============================================

``Verifier`` is ``verify`` for servers: it remembers which tokens already
authenticated (bounded LRU), so the Ed25519 check runs once per token, not
once per request.

A bound token is only checked against an address the caller passes: servers
always pass the client address; ``legato token verify`` only with ``--ip``.
Like the token schemes of CDNs (Akamai, CloudFront, nginx secure_link), a
token can be presented again until it expires; replay is limited by the
short lifetime, the track and address binding, and the per-session rate
limit on key requests (drm.ratelimit).  Error messages never contain key
material or the token itself.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from legato.urls import is_track_id

VERSION = "v1"
MAX_TOKEN_CHARS = 4096
MAX_TRACKS = 64
MAX_TEXT_CHARS = 256
SIGNATURE_BYTES = 64
KEY_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
"""A signing key id (use with ``fullmatch``); it travels in every token."""
_B64_RE = re.compile(r"[A-Za-z0-9_-]*")

MISSING = "missing"
MALFORMED = "malformed"
BAD_SIGNATURE = "bad signature"
UNKNOWN_KEY = "unknown signing key"
EXPIRED = "expired"
NOT_YET_VALID = "not yet valid"
WRONG_TRACK = "wrong track"
WRONG_ADDRESS = "wrong address"
REASONS = (MISSING, MALFORMED, BAD_SIGNATURE, UNKNOWN_KEY, EXPIRED, NOT_YET_VALID, WRONG_TRACK, WRONG_ADDRESS)
_FORBIDDEN = frozenset({WRONG_TRACK, WRONG_ADDRESS})


class TokenError(Exception):
    """Why a token was refused: ``reason`` (one of ``REASONS``), ``status`` (401/403), ``detail``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    @property
    def status(self) -> int:
        """403 when the token is good but not for this (track, address); 401 otherwise."""
        return 403 if self.reason in _FORBIDDEN else 401


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token grants."""

    user: str
    session: str
    tracks: tuple[str, ...]
    iat: int
    nbf: int
    exp: int
    bind_ip: str | None
    key_id: str

    def allows(self, track: str) -> bool:
        return track in self.tracks


# ---------------------------------------------------------------- encoding


def b64url_encode(data: bytes) -> str:
    """base64url without padding (RFC 4648 §5, as JWS and EME ClearKey use it)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict inverse of ``b64url_encode``: ValueError unless ``text`` is its canonical output."""
    if not _B64_RE.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None
    if b64url_encode(data) != text:  # stray bits in the last character
        raise ValueError("not canonical base64url")
    return data


def canonical_ip(value: str) -> str:
    """An address in one spelling (IPv4-mapped IPv6 as IPv4); ValueError if it is none."""
    ip = ipaddress.ip_address(value.strip())
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT_CHARS or not value.isprintable():
        raise ValueError(f"{name} must be 1..{MAX_TEXT_CHARS} printable characters")
    return value


def _check_tracks(tracks: str | Iterable[str]) -> tuple[str, ...]:
    items = (tracks,) if isinstance(tracks, str) else tuple(tracks)
    items = tuple(dict.fromkeys(items))  # de-duplicated, order kept
    if not items or len(items) > MAX_TRACKS:
        raise ValueError(f"a token names 1..{MAX_TRACKS} tracks, got {len(items)}")
    for track in items:
        if not isinstance(track, str) or not is_track_id(track):
            raise ValueError(f"not a track id: {track!r}")
    return items


# ---------------------------------------------------------------- issue


def issue(private_key: Ed25519PrivateKey, key_id: str, *, user: str, session: str,
          tracks: str | Iterable[str], now: float, ttl: float = 300, bind_ip: str | None = None,
          nbf: float | None = None) -> str:
    """A signed token for ``user``'s ``session`` on ``tracks``, valid from ``nbf`` (default ``now``)
    for ``ttl`` seconds from ``now``; bound to ``bind_ip`` when given.  ValueError on bad arguments."""
    if not KEY_ID_RE.fullmatch(key_id):
        raise ValueError(f"key id {key_id!r} must match {KEY_ID_RE.pattern}")
    if not (isinstance(ttl, (int, float)) and 0 < ttl < math.inf):
        raise ValueError(f"ttl must be positive seconds, got {ttl!r}")
    claims: dict[str, Any] = {
        "sub": _check_text("user", user),
        "sid": _check_text("session", session),
        "trk": list(_check_tracks(tracks)),
        "iat": math.floor(now),
        "nbf": math.floor(now if nbf is None else nbf),
        "exp": math.floor(now + ttl),
    }
    if bind_ip is not None:
        try:
            claims["ip"] = canonical_ip(bind_ip)
        except ValueError:
            raise ValueError(f"not an IP address: {bind_ip!r}") from None
    payload = b64url_encode(json.dumps(claims, separators=(",", ":"), ensure_ascii=True).encode("ascii"))
    signing_input = f"{VERSION}.{key_id}.{payload}"
    return f"{signing_input}.{b64url_encode(private_key.sign(signing_input.encode('ascii')))}"


# ---------------------------------------------------------------- verify


def _split(token: object) -> tuple[str, str, bytes, bytes]:
    """(key id, signing input, claims JSON bytes, signature) or TokenError(malformed)."""
    if not isinstance(token, str):
        raise TokenError(MALFORMED, "a token is text")
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError(MALFORMED, f"longer than {MAX_TOKEN_CHARS} characters")
    parts = token.split(".")
    if len(parts) != 4:
        raise TokenError(MALFORMED, f"expected 4 dot-separated fields, got {len(parts)}")
    version, key_id, payload, signature = parts
    if version != VERSION:
        raise TokenError(MALFORMED, f"not a version {VERSION} token")
    if not KEY_ID_RE.fullmatch(key_id):
        raise TokenError(MALFORMED, "bad signing key id field")
    try:
        claims = b64url_decode(payload)
    except ValueError as exc:
        raise TokenError(MALFORMED, f"claims field: {exc}") from None
    try:
        sig = b64url_decode(signature)
    except ValueError as exc:
        raise TokenError(MALFORMED, f"signature field: {exc}") from None
    if len(sig) != SIGNATURE_BYTES:
        raise TokenError(MALFORMED, f"signature is {len(sig)} bytes, not {SIGNATURE_BYTES}")
    return key_id, f"{version}.{key_id}.{payload}", claims, sig


def _int_claim(claims: dict[str, Any], name: str) -> int:
    value = claims.get(name)
    if type(value) is not int or not -(2**53) < value < 2**53:
        raise TokenError(MALFORMED, f"claim {name!r} must be an integer time")
    return value


def _parse_claims(data: bytes, key_id: str) -> Claims:
    try:
        claims = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise TokenError(MALFORMED, "claims are not JSON") from None
    if not isinstance(claims, dict):
        raise TokenError(MALFORMED, "claims are not a JSON object")
    try:
        user = _check_text("user", claims.get("sub"))
        session = _check_text("session", claims.get("sid"))
        trk, ip = claims.get("trk"), claims.get("ip")
        if not isinstance(trk, list):
            raise TokenError(MALFORMED, "claim 'trk' must be an array of track ids")
        if ip is not None and not isinstance(ip, str):
            raise TokenError(MALFORMED, "claim 'ip' must be an address")
        tracks = _check_tracks(trk)
        bind_ip = None if ip is None else canonical_ip(ip)
    except ValueError as exc:
        raise TokenError(MALFORMED, str(exc)) from None
    return Claims(user, session, tracks, _int_claim(claims, "iat"), _int_claim(claims, "nbf"),
                  _int_claim(claims, "exp"), bind_ip, key_id)


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def authenticate(token: str | None, public_keys: Mapping[str, Ed25519PublicKey]) -> Claims:
    """The claims of a token whose signature verifies, however old; TokenError (missing, malformed,
    unknown signing key, bad signature) otherwise.  ``verify`` = this + ``check``."""
    if token is None or token == "":
        raise TokenError(MISSING, "no token given")
    key_id, signing_input, payload, signature = _split(token)
    public_key = public_keys.get(key_id)
    if public_key is None:
        raise TokenError(UNKNOWN_KEY, f"signing key {key_id!r} is not among the accepted keys "
                                      f"({', '.join(sorted(public_keys)) or 'none configured'})")
    try:
        public_key.verify(signature, signing_input.encode("ascii"))
    except InvalidSignature:
        raise TokenError(BAD_SIGNATURE, f"not signed by key {key_id!r}, or altered since") from None
    return _parse_claims(payload, key_id)


def check(claims: Claims, *, now: float, track: str | None = None, client_ip: str | None = None,
          skew: float = 30) -> Claims:
    """The time, track and address checks of authenticated claims; returns them or raises TokenError."""
    if now < claims.nbf - skew:
        raise TokenError(NOT_YET_VALID, f"valid from {_utc(claims.nbf)} ({claims.nbf - now:.0f} s from now, "
                                        f"skew {skew:g} s)")
    if now >= claims.exp + skew:
        raise TokenError(EXPIRED, f"expired at {_utc(claims.exp)} ({now - claims.exp:.0f} s ago, skew {skew:g} s)")
    if track is not None and track not in claims.tracks:
        raise TokenError(WRONG_TRACK, f"the token is for {', '.join(claims.tracks)}, not {track}")
    if client_ip is not None and claims.bind_ip is not None:
        try:
            same = canonical_ip(client_ip) == claims.bind_ip
        except ValueError:
            same = False
        if not same:
            raise TokenError(WRONG_ADDRESS, f"the token is bound to {claims.bind_ip}, not {client_ip}")
    return claims


def verify(token: str | None, public_keys: Mapping[str, Ed25519PublicKey], *, now: float,
           track: str | None = None, client_ip: str | None = None, skew: float = 30) -> Claims:
    """The claims of a valid token, or TokenError saying why not (see the module docstring)."""
    return check(authenticate(token, public_keys), now=now, track=track, client_ip=client_ip, skew=skew)


class Verifier:
    """``verify`` for a server: the same answers, with signature checks remembered.

    An Ed25519 verification costs 100-400 µs of CPU (OpenSSL; this machine),
    more than the rest of a key request together, and a session presents the
    same token again and again (the edge sees its manifests and keys, the key
    service each rendition's key and the licence).  So the claims of tokens
    that *authenticated* are kept in a bounded LRU keyed by the exact token
    string; the time, track and address checks still run on every request.
    Only successes are remembered: a token that fails is a different string
    from any that passed, and costs a full check every time.  The memo
    belongs to one set of public keys; a new set means a new Verifier.
    """

    def __init__(self, public_keys: Mapping[str, Ed25519PublicKey], *, skew: float = 30,
                 max_entries: int = 10_000) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries {max_entries} is negative")
        self.public_keys = dict(public_keys)
        self.skew = skew
        self.max_entries = max_entries
        self._memo: OrderedDict[str, Claims] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._memo)

    def verify(self, token: str | None, *, now: float, track: str | None = None,
               client_ip: str | None = None) -> Claims:
        if not isinstance(token, str):
            return verify(token, self.public_keys, now=now, skew=self.skew)  # raises: missing or malformed
        memo = self._memo
        claims = memo.get(token)
        if claims is None:
            self.misses += 1
            claims = authenticate(token, self.public_keys)
            if self.max_entries and now < claims.exp + self.skew:  # expired ones would never pass again
                memo[token] = claims
                if len(memo) > self.max_entries:
                    memo.popitem(last=False)
        else:
            self.hits += 1
            memo.move_to_end(token)
        return check(claims, now=now, track=track, client_ip=client_ip, skew=self.skew)
