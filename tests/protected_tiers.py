"""A protected track behind real tiers, for the end-to-end and browser tests.

``package_protected(tmp, source)`` packages ``source`` twice into one store:
``sunrise`` protected (``--protect both``: HLS AES-128 and DASH CENC, keys
in a key store outside the served tree, wrapped with a fresh master key) and
``sunrise-clear`` in the clear (``--protect none``), plus a fresh Ed25519
signing key.  ``protected_tiers(pack)`` starts origin (with its key service:
``[keys]`` and ``[tokens]`` in its config, the cache tiers trusted to name
the client) -> regional -> edge (``--public-key``) on 127.0.0.1 and yields
them with a token factory.

Import as ``from protected_tiers import ...`` (tests/ is on sys.path through
the root conftest).
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from servers import NodeProcess, node_process

from drm.tokens import issue

TRACK = "sunrise"
CLEAR = "sunrise-clear"
KEY_ID = "k1"


@dataclass
class Pack:
    """A store with a protected and a clear copy of one source, and the secrets around it."""

    store: Path
    origin_config: Path
    public_key: Path
    signing_key: Ed25519PrivateKey
    tmp: Path

    def token(self, track: str | tuple[str, ...] = TRACK, *, session: str = "s-e2e", key: Ed25519PrivateKey | None = None,
              **kw: object) -> str:
        kw.setdefault("now", time.time())
        tracks = (track,) if isinstance(track, str) else track
        return issue(key or self.signing_key, KEY_ID, user="listener", session=session, tracks=tracks,
                     **kw)  # type: ignore[arg-type]


@dataclass
class Tiers:
    pack: Pack
    origin: NodeProcess
    regional: NodeProcess
    edge: NodeProcess


def _legato(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "legato.cli", *args], capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"legato {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def package_protected(tmp: Path, source: Path) -> Pack:
    keys = tmp / "keys"
    keys.mkdir(mode=0o700)
    master = keys / "master.key"
    master.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    master.chmod(0o600)
    signing = Ed25519PrivateKey.generate()
    public = keys / f"{KEY_ID}.pub.pem"
    public.write_bytes(signing.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    store = tmp / "store"
    config = tmp / "origin.toml"
    config.write_text(f'store = "{store}"\nlisten = "127.0.0.1:0"\naccess_log = true\n'
                      f'trusted_proxies = ["127.0.0.0/8", "::1/128"]\n'
                      f'[keys]\nstore = "{keys / "keys.sqlite"}"\nmaster_key_file = "{master}"\n'
                      f'[tokens]\npublic_keys = {{ {KEY_ID} = "{public}" }}\n')
    _legato("package", str(source), "--store", str(store), "--track-id", TRACK, "--protect", "both",
            "--keys-config", str(config), "--no-progress")
    _legato("package", str(source), "--store", str(store), "--track-id", CLEAR, "--protect", "none", "--no-progress")
    return Pack(store, config, public, signing, tmp)


@contextlib.contextmanager
def protected_tiers(pack: Pack, *edge_args: str) -> Iterator[Tiers]:
    """origin (key service) -> regional -> edge, each on 127.0.0.1 and a free port."""
    with contextlib.ExitStack() as stack:
        origin = stack.enter_context(node_process("origin", "--config", str(pack.origin_config)))
        common = ["--listen", "127.0.0.1:0", "--cache-size", "256M"]
        regional = stack.enter_context(node_process(
            "regional", "--name", "regional-p", "--upstream", origin.url, "--cache-dir", str(pack.tmp / "regional"),
            *common))
        edge = stack.enter_context(node_process(
            "edge", "--name", "edge-p", "--upstream", regional.url, "--cache-dir", str(pack.tmp / "edge"),
            "--public-key", f"{KEY_ID}={pack.public_key}", *common, *edge_args))
        yield Tiers(pack, origin, regional, edge)
