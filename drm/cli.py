"""``legato keys`` and ``legato token``: the key store and session tokens from the shell.

Both read ``[keys]`` / ``[tokens]`` from ``--config FILE`` (config/drm.toml, or
a node's own config file: other tables are ignored); flags override the file.
Exit status: 0 done, 1 refused (a bad token, a store that cannot be changed),
2 bad usage or configuration.  Nothing here prints a secret unless asked
(``legato keys show --reveal``); the token is the only thing ``token issue``
writes to stdout, so ``TOKEN=$(legato token issue ...)`` works.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from legato import config as cfg
from legato.cli import HelpFormatter

KEYS_DESCRIPTION = """\
Inspect the content key store and rotate its master key.

The key store (SQLite, [keys] store) holds every track's content keys,
wrapped with the master key ([keys] master_key_file, or the environment
variable named by [keys] master_key_env, LEGATO_MASTER_KEY by default).
`legato package --protect` fills it; the origin's key service reads it.

  legato keys genkey --out keys/master.key          a new master key file (0600)
  legato keys show --config config/drm.toml         tracks with keys
  legato keys show sunrise --config config/drm.toml key ids of a track
  legato keys rotate-master --config config/drm.toml --new-master-key-file keys/master2.key
"""

TOKEN_DESCRIPTION = """\
Issue and verify session tokens (Ed25519-signed, see drm/tokens.py for the format).

The issuer holds the private key ([tokens] private_key_file and key_id);
edges and the key service hold only public keys ([tokens.public_keys]).

  legato token genkey --out keys/signing --key-id k1
  TOKEN=$(legato token issue --config config/drm.toml --user alice --track sunrise)
  legato token verify "$TOKEN" --config config/drm.toml --track sunrise
"""


def _para(text: str) -> str:
    """A description paragraph wrapped for the terminal (the formatter keeps line breaks as written)."""
    return textwrap.fill(text, 78)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", default=None,
                        help="TOML file with [keys] and [tokens] tables (config/drm.toml, or a node's config)")


def _keys_flags(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--store", type=Path, metavar="FILE", default=None,
                        help="key store file; overrides [keys] store")
    parser.add_argument("--master-key-file", type=Path, metavar="FILE", default=None,
                        help="current master key file; overrides [keys] master_key_file")


def _fail(command: str, message: object, status: int = 2) -> int:
    print(f"legato {command}: {message}", file=sys.stderr)
    return status


# ---------------------------------------------------------------- legato keys


def register_keys(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``legato keys`` (genkey, show, rotate-master)."""
    parser = subparsers.add_parser("keys", help="show content key ids, rotate the key store's master key",
                                   description=KEYS_DESCRIPTION, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    p = sub.add_parser("genkey", help="write a new random master key file (base64, mode 0600)",
                       description=_para("Write a new random 32-byte master key, base64, to a new file with mode "
                       "0600. An existing file is never overwritten."), formatter_class=HelpFormatter)
    p.add_argument("--out", type=Path, metavar="FILE", required=True, help="file to create")
    p.set_defaults(func=keys_genkey)

    p = sub.add_parser("show", help="list tracks with keys, or a track's key ids (keys only with --reveal)",
                       description=_para("Without TRACK: every track with keys and how many. With TRACK: one line "
                       "per key, 'GROUP KID' (GROUP '-' for a track-wide key), and with --reveal the key "
                       "itself as a third column."), formatter_class=HelpFormatter)
    p.add_argument("track", nargs="?", metavar="TRACK", help="track id")
    p.add_argument("--reveal", action="store_true",
                   help="also print the content keys (hex); they are secrets, mind your terminal and logs")
    _keys_flags(p)
    p.set_defaults(func=keys_show)

    p = sub.add_parser("rotate-master", help="re-wrap every key with a new master key, in one transaction",
                       description=_para("Unwrap every content key with the current master key and wrap it with "
                       "the new one, in one transaction: the new wrapping is verified before it is "
                       "committed, and a key that does not unwrap aborts the rotation with nothing "
                       "changed. Afterwards point [keys] master_key_file (or the variable) at the new key; "
                       "running nodes keep working until restarted with the old key, then refuse to start "
                       "('does not match')."), formatter_class=HelpFormatter)
    p.add_argument("--new-master-key-file", type=Path, metavar="FILE", required=True,
                   help="file holding the new master key (make one with `legato keys genkey`)")
    _keys_flags(p)
    p.set_defaults(func=keys_rotate_master)


def _keys_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from drm.config import KeysConfig, load_sections

    keys = load_sections(args.config)[0] if args.config is not None else KeysConfig()
    return cfg.replace(keys, store=args.store, master_key_file=args.master_key_file)


def _with_store(command: str, args: argparse.Namespace, action: Callable[..., int]) -> int:
    """Open the configured store (never creating it) and run ``action(store)``."""
    from drm.config import load_master_key
    from drm.keys import KeyStore, KeyStoreError

    try:
        keys = _keys_config(args)
        path = keys.require_store()
        master = load_master_key(keys)
    except cfg.ConfigError as exc:
        return _fail(command, exc)
    try:
        with KeyStore.open(path, master, create=False) as store:
            return action(store)
    except KeyStoreError as exc:
        return _fail(command, exc, 1)


def write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (never replacing a file) with ``mode`` from the start, then write and fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def keys_genkey(args: argparse.Namespace) -> int:
    from drm.config import MASTER_KEY_BYTES, encode_master_key

    try:
        write_new_file(args.out, (encode_master_key(os.urandom(MASTER_KEY_BYTES)) + "\n").encode(), 0o600)
    except FileExistsError:
        return _fail("keys genkey", f"{args.out}: already exists (a master key is never overwritten)", 1)
    except OSError as exc:
        return _fail("keys genkey", f"{args.out}: cannot create: {exc.strerror}", 1)
    print(f"wrote a new master key to {args.out} (mode 0600); name it in [keys] master_key_file")
    return 0


def keys_show(args: argparse.Namespace) -> int:
    from drm.keys import KeyStore

    def show(store: KeyStore) -> int:
        if args.track is None:
            tracks = store.tracks()
            for track in tracks:
                print(f"{track}\t{len(store.for_track(track))} key(s)")
            print(f"{len(tracks)} track(s), {len(store)} key(s) in {store.path}", file=sys.stderr)
            return 0
        rows = store.for_track(args.track)
        if not rows:
            return _fail("keys show", f"no keys for track {args.track!r} in {store.path}", 1)
        for group, kid in rows:
            line = f"{group or '-'}\t{kid.hex()}"
            if args.reveal:
                key = store.get(kid)
                assert key is not None
                line += f"\t{key.key.hex()}"
            print(line)
        return 0

    return _with_store("keys show", args, show)


def keys_rotate_master(args: argparse.Namespace) -> int:
    from drm.config import KeysConfig, load_master_key
    from drm.keys import KeyStore

    try:
        new_master = load_master_key(KeysConfig(master_key_file=args.new_master_key_file))
    except cfg.ConfigError as exc:
        return _fail("keys rotate-master", exc)

    def rotate(store: KeyStore) -> int:
        count = store.rotate_master(new_master)
        print(f"re-wrapped {count} key(s) in {store.path} with the master key from {args.new_master_key_file}; "
              "point [keys] master_key_file (or the environment variable) at it now")
        return 0

    return _with_store("keys rotate-master", args, rotate)


# ---------------------------------------------------------------- legato token


def _key_id_and_path(value: str) -> tuple[str, Path]:
    key_id, sep, path = value.partition("=")
    if not sep or not key_id or not path:
        raise argparse.ArgumentTypeError(f"expected ID=FILE, got {value!r}")
    return key_id, Path(path)


def register_token(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``legato token`` (genkey, issue, verify)."""
    parser = subparsers.add_parser("token", help="issue and verify short-lived session tokens",
                                   description=TOKEN_DESCRIPTION, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="token_command", metavar="ACTION", required=True)

    p = sub.add_parser("genkey", help="write a new Ed25519 signing key pair (ID.pem 0600, ID.pub.pem)",
                       description=_para("Write DIR/ID.pem (private key, PKCS#8 PEM, mode 0600: the token issuer "
                       "only) and DIR/ID.pub.pem (public key: edges and the key service). Existing files "
                       "are never overwritten."), formatter_class=HelpFormatter)
    p.add_argument("--out", type=Path, metavar="DIR", required=True, help="directory (created if missing, 0700)")
    p.add_argument("--key-id", metavar="ID", required=True, help="key id ([A-Za-z0-9_-], up to 32)")
    p.set_defaults(func=token_genkey)

    p = sub.add_parser("issue", help="print a signed session token",
                       description=_para("Print a token for USER's listening session on TRACK(s), signed with "
                       "[tokens] private_key_file as [tokens] key_id. Only the token goes to stdout."),
                       formatter_class=HelpFormatter)
    p.add_argument("--user", required=True, help="user id (the 'sub' claim)")
    p.add_argument("--track", action="append", required=True, metavar="TRACK",
                   help="track id the token is good for; repeat for several")
    p.add_argument("--session", default=None, help="session id (default: a new random one)")
    p.add_argument("--ttl", type=float, default=None, metavar="S",
                   help="lifetime in seconds (default: [tokens] ttl, 300)")
    p.add_argument("--bind-ip", metavar="ADDRESS", default=None, help="only valid from this client address")
    p.add_argument("--not-before", type=float, metavar="UNIX_TIME", default=None,
                   help="not valid before this time (default: now)")
    _common(p)
    p.add_argument("--private-key", type=Path, metavar="FILE", default=None,
                   help="Ed25519 private key PEM; overrides [tokens] private_key_file")
    p.add_argument("--key-id", metavar="ID", default=None, help="signing key id; overrides [tokens] key_id")
    p.set_defaults(func=token_issue)

    p = sub.add_parser("verify", help="check a token: print its claims, or say what is wrong (exit 1)",
                       description=_para("Verify TOKEN ('-' reads it from stdin) against [tokens.public_keys] "
                       "and the current time with [tokens] skew. Prints the claims and exits 0 when it is "
                       "good (for --track and --ip when given); otherwise prints the reason (the same one "
                       "the key service and the edges answer with) and what exactly is wrong, and exits 1."),
                       formatter_class=HelpFormatter)
    p.add_argument("token", metavar="TOKEN", help="the token, or '-' to read it from stdin")
    p.add_argument("--track", default=None, help="require the token to be good for this track")
    p.add_argument("--ip", default=None, metavar="ADDRESS", help="check an address binding against this client")
    p.add_argument("--public-key", action="append", type=_key_id_and_path, default=[], metavar="ID=FILE",
                   help="accept this public key (PEM) under ID; repeat; added to [tokens.public_keys]")
    p.add_argument("--skew", type=float, default=None, metavar="S",
                   help="clock skew tolerance (default: [tokens] skew, 30)")
    p.add_argument("--now", type=float, default=None, metavar="UNIX_TIME",
                   help="verify as of this time instead of the clock")
    _common(p)
    p.set_defaults(func=token_verify)


def _tokens_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from drm.config import TokensConfig, load_sections

    return load_sections(args.config)[1] if args.config is not None else TokensConfig()


def token_genkey(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from drm.tokens import KEY_ID_RE

    if not KEY_ID_RE.fullmatch(args.key_id):
        return _fail("token genkey", f"key id {args.key_id!r} must match {KEY_ID_RE.pattern}")
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    priv_path, pub_path = args.out / f"{args.key_id}.pem", args.out / f"{args.key_id}.pub.pem"
    try:
        args.out.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path in (priv_path, pub_path):
            if path.exists():
                return _fail("token genkey", f"{path}: already exists (signing keys are never overwritten)", 1)
        write_new_file(pub_path, public_pem, 0o644)
        write_new_file(priv_path, private_pem, 0o600)
    except OSError as exc:
        return _fail("token genkey", f"{exc.filename or args.out}: {exc.strerror}", 1)
    print(f"wrote {priv_path} (private, 0600: the token issuer only) and {pub_path} (public)\n"
          f"  issuer:    [tokens] private_key_file = \"{priv_path}\", key_id = \"{args.key_id}\"\n"
          f"  verifiers: [tokens.public_keys] {args.key_id} = \"{pub_path}\"")
    return 0


def token_issue(args: argparse.Namespace) -> int:
    from drm.config import load_private_key
    from drm.tokens import issue

    try:
        tokens = _tokens_config(args)
        tokens = cfg.replace(tokens, private_key_file=args.private_key, key_id=args.key_id, ttl=args.ttl)
        key_id, private = load_private_key(tokens)
    except (cfg.ConfigError, ValueError) as exc:
        return _fail("token issue", exc)
    session = args.session if args.session is not None else secrets.token_urlsafe(12)
    try:
        token = issue(private, key_id, user=args.user, session=session, tracks=args.track, now=time.time(),
                      ttl=tokens.ttl, bind_ip=args.bind_ip, nbf=args.not_before)
    except ValueError as exc:
        return _fail("token issue", exc)
    print(token)
    return 0


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def token_verify(args: argparse.Namespace) -> int:
    from drm.config import load_public_keys
    from drm.tokens import TokenError, verify

    try:
        tokens = _tokens_config(args)
        if args.public_key:
            tokens = cfg.replace(tokens, public_keys={**tokens.public_keys, **dict(args.public_key)})
        public_keys = load_public_keys(tokens)
    except (cfg.ConfigError, ValueError) as exc:
        return _fail("token verify", exc)
    if not public_keys:
        return _fail("token verify", "no public keys: give --public-key ID=FILE or [tokens.public_keys] in --config")
    token = sys.stdin.readline().strip() if args.token == "-" else args.token
    now = time.time() if args.now is None else args.now
    skew = tokens.skew if args.skew is None else args.skew
    try:
        claims = verify(token, public_keys, now=now, track=args.track, client_ip=args.ip, skew=skew)
    except TokenError as exc:
        print(f"refused ({exc.status} {exc.reason}): {exc.detail}")
        return 1
    print(f"valid token\n"
          f"  user:        {claims.user}\n"
          f"  session:     {claims.session}\n"
          f"  tracks:      {', '.join(claims.tracks)}\n"
          f"  issued:      {_utc(claims.iat)}\n"
          f"  not before:  {_utc(claims.nbf)}\n"
          f"  expires:     {_utc(claims.exp)} (in {claims.exp - now:.0f} s)\n"
          f"  bound to:    {claims.bind_ip or 'any address'}\n"
          f"  signed by:   key {claims.key_id}")
    return 0
