"""drm.tokens: issue/verify, every refusal reason, and property-based fuzzing.

Hypothesis profiles, applied to this module's tests only: ``legato-ci``
(60 examples, derandomised) when the CI environment variable is set,
``legato-deep`` (400 examples, ~15 s) otherwise; ``legato-fuzz`` (5,000
examples, minutes) on request: ``HYPOTHESIS_TOKENS_PROFILE=legato-fuzz``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import urllib.parse

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drm import tokens
from drm.tokens import Claims, TokenError, b64url_decode, b64url_encode, issue, verify

settings.register_profile("legato-ci", max_examples=60, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("legato-deep", max_examples=400, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("legato-fuzz", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
fuzz = settings.get_profile(os.environ.get("HYPOTHESIS_TOKENS_PROFILE",
                                           "legato-ci" if os.environ.get("CI") else "legato-deep"))

NOW = 1_800_000_000.0
K1 = Ed25519PrivateKey.generate()
K2 = Ed25519PrivateKey.generate()
IMPOSTOR = Ed25519PrivateKey.generate()
PUBLIC = {"k1": K1.public_key(), "k2": K2.public_key()}


def good_token(**kw: object) -> str:
    args: dict = {"user": "alice", "session": "s-1", "tracks": ("sunrise",), "now": NOW}
    args.update(kw)
    return issue(K1, "k1", **args)


TOKEN = good_token()
OTHER_TOKEN = good_token(user="bob", session="s-2")


def reason_of(token: object, **kw: object) -> str:
    args: dict = {"now": NOW}
    args.update(kw)
    with pytest.raises(TokenError) as err:
        verify(token, PUBLIC, **args)  # type: ignore[arg-type]
    return err.value.reason


def sign_raw(claims: bytes, key: Ed25519PrivateKey = K1, key_id: str = "k1") -> str:
    """A token with arbitrary claim bytes, correctly signed (to test claim checks past the signature)."""
    signing_input = f"v1.{key_id}.{b64url_encode(claims)}"
    return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode()))}"


# ---------------------------------------------------------------- the good path


def test_roundtrip_and_url_safety() -> None:
    token = good_token(tracks=("sunrise", "dusk", "sunrise"), bind_ip="192.0.2.7", ttl=120)
    claims = verify(token, PUBLIC, now=NOW + 10, track="dusk", client_ip="192.0.2.7")
    assert claims == Claims("alice", "s-1", ("sunrise", "dusk"), int(NOW), int(NOW), int(NOW) + 120,
                            "192.0.2.7", "k1")
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    assert urllib.parse.quote(token, safe="") == token
    assert token.startswith("v1.k1.") and len(token) < 400
    assert claims.allows("dusk") and not claims.allows("noon")


def test_format_is_as_documented() -> None:
    version, key_id, payload, signature = TOKEN.split(".")
    assert (version, key_id) == ("v1", "k1")
    assert json.loads(b64url_decode(payload)) == {"sub": "alice", "sid": "s-1", "trk": ["sunrise"],
                                                  "iat": int(NOW), "nbf": int(NOW), "exp": int(NOW) + 300}
    K1.public_key().verify(b64url_decode(signature), f"{version}.{key_id}.{payload}".encode())


def test_default_ttl_is_five_minutes_and_skew_thirty_seconds() -> None:
    exp = int(NOW) + 300
    assert verify(TOKEN, PUBLIC, now=exp + 29).exp == exp
    assert reason_of(TOKEN, now=exp + 30) == "expired"
    assert reason_of(TOKEN, now=exp, skew=0) == "expired"
    assert verify(TOKEN, PUBLIC, now=exp - 1, skew=0).user == "alice"


def test_not_before() -> None:
    token = good_token(nbf=NOW + 100)
    assert reason_of(token, now=NOW) == "not yet valid"
    assert reason_of(token, now=NOW + 69) == "not yet valid"
    assert verify(token, PUBLIC, now=NOW + 70).nbf == int(NOW) + 100  # within the 30 s skew
    assert verify(TOKEN, PUBLIC, now=NOW - 30).user == "alice"  # a verifier's clock 30 s behind the issuer's
    assert reason_of(TOKEN, now=NOW - 31) == "not yet valid"


def test_key_rotation_accepts_several_keys() -> None:
    t2 = issue(K2, "k2", user="u", session="s", tracks="sunrise", now=NOW)
    assert verify(t2, PUBLIC, now=NOW).key_id == "k2"
    assert verify(TOKEN, PUBLIC, now=NOW).key_id == "k1"
    with pytest.raises(TokenError) as err:
        verify(TOKEN, {"k2": K2.public_key()}, now=NOW)
    assert err.value.reason == "unknown signing key" and "'k1'" in err.value.detail and err.value.status == 401


def test_wrong_track_and_address_are_403() -> None:
    with pytest.raises(TokenError) as err:
        verify(TOKEN, PUBLIC, now=NOW, track="dusk")
    assert (err.value.reason, err.value.status) == ("wrong track", 403)
    bound = good_token(bind_ip="::ffff:198.51.100.4")
    assert verify(bound, PUBLIC, now=NOW, client_ip="198.51.100.4").bind_ip == "198.51.100.4"
    assert verify(bound, PUBLIC, now=NOW, client_ip="::ffff:198.51.100.4").bind_ip == "198.51.100.4"
    assert verify(bound, PUBLIC, now=NOW).bind_ip == "198.51.100.4"  # no address given: not checked
    for other in ("198.51.100.5", "not an address", "", "2001:db8::1"):
        with pytest.raises(TokenError) as err:
            verify(bound, PUBLIC, now=NOW, client_ip=other)
        assert (err.value.reason, err.value.status) == ("wrong address", 403)
    v6 = good_token(bind_ip="2001:DB8::0:1")
    assert verify(v6, PUBLIC, now=NOW, client_ip="2001:db8::1").bind_ip == "2001:db8::1"
    assert verify(TOKEN, PUBLIC, now=NOW, client_ip="203.0.113.9").bind_ip is None  # unbound: any address


# ---------------------------------------------------------------- refusals


def test_missing_and_statuses() -> None:
    for token in (None, ""):
        with pytest.raises(TokenError) as err:
            verify(token, PUBLIC, now=NOW)
        assert (err.value.reason, err.value.status) == ("missing", 401)


@pytest.mark.parametrize("token", [
    "x", "v1.k1.abc", "v1.k1.a.b.c", "v2" + TOKEN[2:], "V1" + TOKEN[2:], "v1..a.b",
    "v1.k!1." + TOKEN.split(".", 2)[2], TOKEN + "=", TOKEN.replace(".", "..", 1), TOKEN + "\n", " " + TOKEN,
    TOKEN[:-1], TOKEN + "A", "v1.k1." + "A" * 5000 + ".AA", TOKEN.encode(), 42,
])
def test_malformed(token: object) -> None:
    assert reason_of(token) == "malformed"


def test_bad_signature_and_impostor_keys() -> None:
    forged = issue(IMPOSTOR, "k1", user="alice", session="s-1", tracks="sunrise", now=NOW)
    assert reason_of(forged) == "bad signature"
    head, sig = TOKEN.rsplit(".", 1)
    other_head, other_sig = OTHER_TOKEN.rsplit(".", 1)
    assert reason_of(f"{head}.{other_sig}") == "bad signature"  # swapped signatures
    assert reason_of(f"{other_head}.{sig}") == "bad signature"
    assert reason_of(TOKEN.replace("v1.k1.", "v1.k2.", 1)) == "bad signature"  # relabelled key id
    zero = b64url_encode(bytes(64))
    assert reason_of(f"{head}.{zero}") == "bad signature"


def test_jwt_and_alg_confusion_are_malformed() -> None:
    """No algorithm field to confuse: JWTs (alg none, HS256 keyed with our public key) are not tokens."""
    def jwt(header: dict, claims: dict, sig: bytes) -> str:
        h = b64url_encode(json.dumps(header).encode())
        c = b64url_encode(json.dumps(claims).encode())
        return f"{h}.{c}.{b64url_encode(sig)}"
    claims = {"sub": "alice", "sid": "s", "trk": ["sunrise"], "iat": int(NOW), "nbf": int(NOW), "exp": int(NOW) + 60}
    public_raw = K1.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    hs = hmac.new(public_raw, b"x", hashlib.sha256).digest()
    for token in (jwt({"alg": "none"}, claims, b""), jwt({"alg": "HS256", "kid": "k1"}, claims, hs),
                  jwt({"alg": "EdDSA", "kid": "k1"}, claims, bytes(64))):
        assert reason_of(token) == "malformed"


@pytest.mark.parametrize("claims", [
    b"not json", b"[]", b'"text"', b"\xff\xfe", b"{}", b"[" * 1500,
    b'{"sub":"a","sid":"s","trk":"sunrise","iat":1,"nbf":1,"exp":9999999999}',
    b'{"sub":"a","sid":"s","trk":[],"iat":1,"nbf":1,"exp":9999999999}',
    b'{"sub":"a","sid":"s","trk":["../x"],"iat":1,"nbf":1,"exp":9999999999}',
    b'{"sub":"a","sid":"s","trk":[7],"iat":1,"nbf":1,"exp":9999999999}',
    b'{"sub":"a","sid":"s","trk":["t"],"iat":1,"nbf":1,"exp":9999999999.5}',
    b'{"sub":"a","sid":"s","trk":["t"],"iat":1,"nbf":1,"exp":true}',
    b'{"sub":"a","sid":"s","trk":["t"],"iat":1,"nbf":1,"exp":1e400}',
    b'{"sub":"a","sid":"s","trk":["t"],"iat":1,"nbf":1}',
    b'{"sub":"","sid":"s","trk":["t"],"iat":1,"nbf":1,"exp":9999999999}',
    b'{"sub":"a","sid":null,"trk":["t"],"iat":1,"nbf":1,"exp":9999999999}',
    b'{"sub":"a","sid":"s","trk":["t"],"iat":1,"nbf":1,"exp":9999999999,"ip":"nowhere"}',
    b'{"sub":"a","sid":"s","trk":["t"],"iat":1,"nbf":1,"exp":9999999999,"ip":5}',
])
def test_signed_but_malformed_claims(claims: bytes) -> None:
    assert reason_of(sign_raw(claims)) == "malformed"


def test_unknown_claims_are_ignored() -> None:
    extra = b'{"sub":"a","sid":"s","trk":["t"],"iat":1,"nbf":1,"exp":9999999999,"country":"SE"}'
    assert verify(sign_raw(extra), PUBLIC, now=NOW).tracks == ("t",)


def test_messages_never_hold_secrets_or_the_token() -> None:
    private_pem = K1.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()).decode()
    head, sig = TOKEN.rsplit(".", 1)
    for token, kw in ((TOKEN, {"track": "x"}), (TOKEN, {"now": NOW + 1e6}), (f"{head}.{b64url_encode(bytes(64))}", {}),
                      (TOKEN[:-3], {}), (TOKEN.replace("k1", "k9", 1), {})):
        with pytest.raises(TokenError) as err:
            verify(token, PUBLIC, **{"now": NOW, **kw})  # type: ignore[arg-type]
        message = str(err.value)
        assert sig not in message and token.split(".")[2] not in message
        assert private_pem.splitlines()[1] not in message


@pytest.mark.parametrize(("kw", "message"), [
    ({"tracks": ()}, "1..64 tracks"), ({"tracks": ("../etc",)}, "not a track id"), ({"tracks": ("ok", 5)}, "track id"),
    ({"user": ""}, "user"), ({"session": "a\nb"}, "session"), ({"bind_ip": "300.1.1.1"}, "not an IP address"),
    ({"ttl": 0}, "ttl"), ({"ttl": float("nan")}, "ttl"), ({"user": "x" * 300}, "user"),
])
def test_issue_rejects_bad_arguments(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        good_token(**kw)
    with pytest.raises(ValueError, match="key id"):
        issue(K1, "bad.id", user="u", session="s", tracks="t", now=NOW)


def test_b64url_is_strict() -> None:
    assert b64url_decode(b64url_encode(b"\x00\xff")) == b"\x00\xff"
    for bad in ("AP8=", "AP+", "AP/", "A", "AP9", "AP 8", "é"):
        with pytest.raises(ValueError):
            b64url_decode(bad)


# ---------------------------------------------------------------- property-based

track_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True)
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp", "Co", "Cn", "Zs", "Cf")),
                min_size=1, max_size=40)


def expect_refusal(token: object, **kw: object) -> TokenError:
    try:
        claims = verify(token, PUBLIC, **{"now": NOW, **kw})  # type: ignore[arg-type]
    except TokenError as exc:
        assert exc.reason in tokens.REASONS and exc.status in (401, 403)
        return exc
    raise AssertionError(f"verified: {claims}")


@fuzz
@given(st.one_of(st.text(max_size=600), st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
                 st.from_regex(r"v1\.[A-Za-z0-9_-]{1,32}\.[A-Za-z0-9_-]{0,300}\.[A-Za-z0-9_-]{0,100}",
                               fullmatch=True)))
def test_random_strings_never_verify(token: str) -> None:
    expect_refusal(token)


@fuzz
@given(st.data())
def test_bit_flips_never_verify(data: st.DataObject) -> None:
    token = data.draw(st.sampled_from((TOKEN, OTHER_TOKEN)))
    i = data.draw(st.integers(0, len(token) - 1))
    bit = data.draw(st.integers(0, 7))
    mutated = token[:i] + chr(ord(token[i]) ^ (1 << bit)) + token[i + 1:]
    expect_refusal(mutated)


@fuzz
@given(st.data())
def test_truncations_insertions_and_deletions_never_verify(data: st.DataObject) -> None:
    token = TOKEN
    i = data.draw(st.integers(0, len(token)))
    j = data.draw(st.integers(i, len(token)))
    insert = data.draw(st.text(max_size=4))
    mutated = token[:i] + insert + token[j:]
    if mutated != token:
        expect_refusal(mutated)
    expect_refusal(token[:data.draw(st.integers(0, len(token) - 1))])


@fuzz
@given(st.data())
def test_reencodings_never_verify(data: st.DataObject) -> None:
    """The same bytes spelt differently (padding, standard alphabet, percent-escapes) are refused."""
    version, key_id, payload, signature = TOKEN.split(".")
    field = data.draw(st.sampled_from(("payload", "signature")))
    raw = b64url_decode(payload if field == "payload" else signature)
    spelling = data.draw(st.sampled_from(("padded", "standard", "percent", "upper", "space")))
    text = {
        "padded": base64.urlsafe_b64encode(raw).decode() + "=",
        "standard": base64.b64encode(raw).decode(),
        "percent": urllib.parse.quote(b64url_encode(raw)[:10], safe="") + "%41" + b64url_encode(raw)[10:],
        "upper": b64url_encode(raw).swapcase(),
        "space": b64url_encode(raw)[:5] + " " + b64url_encode(raw)[5:],
    }[spelling]
    mutated = ".".join((version, key_id, text, signature) if field == "payload" else (version, key_id, payload, text))
    if mutated != TOKEN:
        expect_refusal(mutated)


@fuzz
@given(st.binary(max_size=400))
def test_signed_garbage_claims_only_raise_token_error(claims: bytes) -> None:
    try:
        verify(sign_raw(claims), PUBLIC, now=NOW)
    except TokenError as exc:
        assert exc.reason in ("malformed", "expired", "not yet valid")


@fuzz
@given(st.dictionaries(st.sampled_from(("sub", "sid", "trk", "iat", "nbf", "exp", "ip", "x")),
                       st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c,
                                                                                          max_size=3),
                                    max_leaves=6)))
def test_signed_odd_json_claims_only_raise_token_error(claims: dict) -> None:
    try:
        verify(sign_raw(json.dumps(claims).encode()), PUBLIC, now=NOW, track="t", client_ip="192.0.2.1")
    except TokenError as exc:
        assert exc.reason in tokens.REASONS


@fuzz
@given(user=texts, session=texts, tracks=st.lists(track_ids, min_size=1, max_size=5),
       offset=st.integers(-10**6, 10**6), ttl=st.integers(1, 86_400),
       ip=st.none() | st.ip_addresses().map(str))
def test_any_issued_token_verifies_to_its_claims(user: str, session: str, tracks: list[str], offset: int,
                                                 ttl: int, ip: str | None) -> None:
    now = NOW + offset
    token = issue(K2, "k2", user=user, session=session, tracks=tracks, now=now, ttl=ttl, bind_ip=ip)
    claims = verify(token, PUBLIC, now=now, track=tracks[-1], client_ip=ip)
    assert (claims.user, claims.session, claims.tracks) == (user, session, tuple(dict.fromkeys(tracks)))
    assert claims.exp == int(now + ttl) and claims.key_id == "k2"
    assert expect_refusal(token, now=now + ttl + 31).reason == "expired"
    assert expect_refusal(token, now=now, track="zz-not-one-of-them" + tracks[0]).reason == "wrong track"


# ---------------------------------------------------------------- Verifier (remembered signature checks)


def outcome(fn: object, *args: object, **kw: object) -> object:
    try:
        return fn(*args, **kw)  # type: ignore[operator]
    except TokenError as exc:
        return ("refused", exc.reason, exc.status)


def test_verifier_remembers_authenticated_tokens_only() -> None:
    v = tokens.Verifier(PUBLIC, skew=30, max_entries=3)
    assert v.verify(TOKEN, now=NOW) == verify(TOKEN, PUBLIC, now=NOW)
    assert v.verify(TOKEN, now=NOW + 10, track="sunrise") and (v.hits, v.misses) == (1, 1)
    # the checks that depend on the request still run on a remembered token
    for kw in ({"track": "dusk"}, {"now": NOW + 1000}, {"now": NOW - 100}):
        with pytest.raises(TokenError):
            v.verify(TOKEN, **{"now": NOW, **kw})  # type: ignore[arg-type]
    bound = good_token(bind_ip="192.0.2.1")
    v.verify(bound, now=NOW, client_ip="192.0.2.1")
    with pytest.raises(TokenError, match="wrong address"):
        v.verify(bound, now=NOW, client_ip="192.0.2.2")
    head, _ = TOKEN.rsplit(".", 1)
    for _ in range(3):  # failures are never remembered
        with pytest.raises(TokenError, match="bad signature"):
            v.verify(f"{head}.{b64url_encode(bytes(64))}", now=NOW)
    assert len(v) == 2
    for i in range(10):
        v.verify(good_token(session=f"s{i}"), now=NOW)
    assert len(v) == 3  # bounded
    expired = good_token(now=NOW - 1000)
    with pytest.raises(TokenError, match="expired"):
        v.verify(expired, now=NOW)
    assert expired not in v._memo
    for token in (None, "", 5):
        with pytest.raises(TokenError):
            v.verify(token, now=NOW)  # type: ignore[arg-type]


def test_a_verifier_knows_only_its_own_keys() -> None:
    v1 = tokens.Verifier({"k1": K1.public_key()})
    v2 = tokens.Verifier({"k2": K2.public_key()})
    v1.verify(TOKEN, now=NOW)
    with pytest.raises(TokenError, match="unknown signing key"):
        v2.verify(TOKEN, now=NOW)


@fuzz
@given(st.data())
def test_verifier_agrees_with_verify(data: st.DataObject) -> None:
    v = tokens.Verifier(PUBLIC, skew=30, max_entries=4)
    pool = [TOKEN, OTHER_TOKEN, good_token(bind_ip="192.0.2.1"), good_token(now=NOW - 200, tracks=("dusk",))]
    for _ in range(data.draw(st.integers(1, 12))):
        token = data.draw(st.sampled_from(pool))
        if data.draw(st.booleans()):
            i = data.draw(st.integers(0, len(token) - 1))
            token = token[:i] + chr(ord(token[i]) ^ 1) + token[i + 1:]
        kw = {"now": NOW + data.draw(st.integers(-100, 400)),
              "track": data.draw(st.sampled_from((None, "sunrise", "dusk"))),
              "client_ip": data.draw(st.sampled_from((None, "192.0.2.1", "192.0.2.9")))}
        assert outcome(v.verify, token, **kw) == outcome(verify, token, PUBLIC, skew=30, **kw)
