"""`legato keys` and `legato token` as real processes."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from drm.config import load_sections
from drm.keys import KeyStore, new_content_key

REPO = Path(__file__).resolve().parents[2]
Cli = Callable[..., subprocess.CompletedProcess[str]]


def run_env(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "legato.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, input=stdin, timeout=60, check=False)


@pytest.fixture
def setup(tmp_path: Path, cli: Cli) -> dict:
    """A master key, a key store with two tracks, a signing key pair and a config naming them all."""
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o700)
    cli("keys", "genkey", "--out", str(keys_dir / "master.key"))
    cli("token", "genkey", "--out", str(keys_dir / "signing"), "--key-id", "k1")
    config = tmp_path / "drm.toml"
    config.write_text(f"""
[keys]
store = "{keys_dir / 'keys.sqlite'}"
master_key_file = "{keys_dir / 'master.key'}"
[tokens]
private_key_file = "{keys_dir / 'signing' / 'k1.pem'}"
key_id = "k1"
ttl = 120
[tokens.public_keys]
k1 = "{keys_dir / 'signing' / 'k1.pub.pem'}"
""")
    master = base64.b64decode((keys_dir / "master.key").read_text())
    track_keys = {"sunrise": new_content_key(), "sunrise-flac": new_content_key(), "dusk": new_content_key()}
    with KeyStore.open(keys_dir / "keys.sqlite", master) as ks:
        ks.put("sunrise", track_keys["sunrise"])
        ks.put("sunrise", track_keys["sunrise-flac"], "flac")
        ks.put("dusk", track_keys["dusk"])
    return {"config": str(config), "dir": keys_dir, "keys": track_keys, "master": master}


def test_help() -> None:
    for args in (("keys", "--help"), ("keys", "show", "--help"), ("keys", "rotate-master", "--help"),
                 ("keys", "genkey", "--help"), ("token", "--help"), ("token", "issue", "--help"),
                 ("token", "verify", "--help"), ("token", "genkey", "--help")):
        out = run_env(*args, env={})
        assert out.returncode == 0 and "usage: legato" in out.stdout, args
    assert "--reveal" in run_env("keys", "show", "--help", env={}).stdout


def test_the_shipped_example_config_loads() -> None:
    keys, tokens = load_sections(REPO / "config" / "drm.toml")
    assert keys.store == Path("keys/keys.sqlite") and keys.master_key_file == Path("keys/master.key")
    assert dict(tokens.public_keys) == {"k1": Path("keys/signing/k1.pub.pem")} and tokens.key_id == "k1"
    assert (tokens.ttl, tokens.skew, tokens.burst) == (300.0, 30.0, 20)


def test_genkey_files(tmp_path: Path, cli: Cli) -> None:
    out = cli("keys", "genkey", "--out", str(tmp_path / "m.key"))
    assert "m.key" in out.stdout
    data = (tmp_path / "m.key").read_bytes()
    assert len(base64.b64decode(data)) == 32 and base64.b64encode(base64.b64decode(data)) + b"\n" == data
    assert stat.S_IMODE((tmp_path / "m.key").stat().st_mode) == 0o600
    again = cli("keys", "genkey", "--out", str(tmp_path / "m.key"), check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert (tmp_path / "m.key").read_bytes() == data

    cli("token", "genkey", "--out", str(tmp_path / "sig"), "--key-id", "edge-2025")
    assert stat.S_IMODE((tmp_path / "sig" / "edge-2025.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "sig").stat().st_mode) == 0o700
    assert b"PUBLIC KEY" in (tmp_path / "sig" / "edge-2025.pub.pem").read_bytes()
    again = cli("token", "genkey", "--out", str(tmp_path / "sig"), "--key-id", "edge-2025", check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = cli("token", "genkey", "--out", str(tmp_path / "sig"), "--key-id", "no/slash", check=False)
    assert bad.returncode == 2 and "key id" in bad.stderr


def test_keys_show(setup: dict, cli: Cli) -> None:
    keys = setup["keys"]
    listing = cli("keys", "show", "--config", setup["config"])
    assert listing.stdout.splitlines() == ["dusk\t1 key(s)", "sunrise\t2 key(s)"]
    shown = cli("keys", "show", "sunrise", "--config", setup["config"])
    lines = shown.stdout.splitlines()
    assert sorted(lines) == sorted([f"-\t{keys['sunrise'].kid_hex}", f"flac\t{keys['sunrise-flac'].kid_hex}"])
    for key in keys.values():
        assert key.key.hex() not in shown.stdout + shown.stderr + listing.stdout + listing.stderr
    revealed = cli("keys", "show", "sunrise", "--reveal", "--config", setup["config"])
    assert f"-\t{keys['sunrise'].kid_hex}\t{keys['sunrise'].key.hex()}" in revealed.stdout.splitlines()
    assert keys["dusk"].key.hex() not in revealed.stdout
    none = cli("keys", "show", "noon", "--config", setup["config"], check=False)
    assert none.returncode == 1 and "no keys for track 'noon'" in none.stderr


def test_keys_errors(setup: dict, tmp_path: Path, cli: Cli) -> None:
    wrong = tmp_path / "wrong.key"
    cli("keys", "genkey", "--out", str(wrong))
    out = cli("keys", "show", "--config", setup["config"], "--master-key-file", str(wrong), check=False)
    assert out.returncode == 1 and "master key does not match" in out.stderr and "Traceback" not in out.stderr
    assert wrong.read_text().strip() not in out.stderr

    out = cli("keys", "show", "--config", setup["config"], "--store", str(tmp_path / "none.sqlite"), check=False)
    assert out.returncode == 1 and "no such file" in out.stderr
    assert not (tmp_path / "none.sqlite").exists()

    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(os.urandom(4096))
    out = cli("keys", "show", "--config", setup["config"], "--store", str(corrupt), check=False)
    assert out.returncode == 1 and "not a usable SQLite key store" in out.stderr

    out = cli("keys", "show", "--store", str(setup["dir"] / "keys.sqlite"), check=False)  # no master key anywhere
    assert out.returncode == 2 and "LEGATO_MASTER_KEY" in out.stderr

    out = cli("keys", "show", "--config", setup["config"], "--master-key-file", str(tmp_path / "nope"), check=False)
    assert out.returncode == 2 and "no such file" in out.stderr

    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("[keys]\nstore = 5\n")
    out = cli("keys", "show", "--config", str(bad_config), check=False)
    assert out.returncode == 2 and "keys.store: expected" in out.stderr and str(bad_config) in out.stderr

    out = cli("keys", "show", check=False)
    assert out.returncode == 2 and "[keys] store is not set" in out.stderr


def test_master_key_from_environment(setup: dict) -> None:
    env = {"LEGATO_MASTER_KEY": base64.b64encode(setup["master"]).decode()}
    out = run_env("keys", "show", "dusk", "--store", str(setup["dir"] / "keys.sqlite"), env=env)
    assert out.returncode == 0 and setup["keys"]["dusk"].kid_hex in out.stdout


def test_rotate_master(setup: dict, tmp_path: Path, cli: Cli) -> None:
    new = tmp_path / "new.key"
    cli("keys", "genkey", "--out", str(new))
    out = cli("keys", "rotate-master", "--config", setup["config"], "--new-master-key-file", str(new))
    assert "re-wrapped 3 key(s)" in out.stdout
    old = cli("keys", "show", "--config", setup["config"], check=False)
    assert old.returncode == 1 and "does not match" in old.stderr
    revealed = cli("keys", "show", "sunrise", "--reveal", "--config", setup["config"], "--master-key-file", str(new))
    assert setup["keys"]["sunrise"].key.hex() in revealed.stdout
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    out = cli("keys", "rotate-master", "--config", setup["config"], "--master-key-file", str(new),
              "--new-master-key-file", str(bad), check=False)
    assert out.returncode == 2 and f"master key file {bad}: not a master key" in out.stderr


def test_token_issue_and_verify(setup: dict, cli: Cli) -> None:
    token = cli("token", "issue", "--config", setup["config"], "--user", "alice", "--track", "sunrise",
                "--track", "dusk", "--session", "sess-9", "--bind-ip", "192.0.2.1").stdout.strip()
    assert token.startswith("v1.k1.") and "\n" not in token
    out = cli("token", "verify", token, "--config", setup["config"], "--track", "dusk", "--ip", "192.0.2.1")
    assert "valid token" in out.stdout and "alice" in out.stdout and "sess-9" in out.stdout
    assert "sunrise, dusk" in out.stdout and "192.0.2.1" in out.stdout and "key k1" in out.stdout
    assert "(in 120 s)" in out.stdout or "(in 119 s)" in out.stdout  # ttl from the config

    stdin = run_env("token", "verify", "-", "--config", setup["config"], env={}, stdin=token + "\n")
    assert stdin.returncode == 0 and "valid token" in stdin.stdout

    def refused(*args: str) -> str:
        result = cli("token", "verify", *args, "--config", setup["config"], check=False)
        assert result.returncode == 1, result
        assert "Traceback" not in result.stderr
        return result.stdout

    assert "refused (403 wrong track): the token is for sunrise, dusk, not noon" in refused(token, "--track", "noon")
    assert "403 wrong address" in refused(token, "--ip", "192.0.2.2")
    assert "401 expired" in refused(token, "--now", str(time.time() + 3600))
    assert "401 not yet valid" in refused(token, "--now", str(time.time() - 3600))
    flipped = token[:-5] + ("A" if token[-5] != "A" else "B") + token[-4:]
    assert "401 bad signature" in refused(flipped)
    assert "401 malformed" in refused(token[:40])
    assert "401 missing" in refused("")


def test_token_ttl_flag_and_session_default(setup: dict, cli: Cli) -> None:
    a = cli("token", "issue", "--config", setup["config"], "--user", "u", "--track", "t", "--ttl", "5").stdout.strip()
    b = cli("token", "issue", "--config", setup["config"], "--user", "u", "--track", "t").stdout.strip()
    out_a = cli("token", "verify", a, "--config", setup["config"]).stdout
    out_b = cli("token", "verify", b, "--config", setup["config"]).stdout
    assert "(in 5 s)" in out_a or "(in 4 s)" in out_a
    session = [line for line in out_a.splitlines() if "session:" in line]
    assert session and session != [line for line in out_b.splitlines() if "session:" in line]  # a new random one


def test_token_verify_with_explicit_public_keys_and_rotation(setup: dict, tmp_path: Path, cli: Cli) -> None:
    cli("token", "genkey", "--out", str(tmp_path / "sig"), "--key-id", "k2")
    token2 = cli("token", "issue", "--private-key", str(tmp_path / "sig" / "k2.pem"), "--key-id", "k2",
                 "--user", "u", "--track", "t").stdout.strip()
    unknown = cli("token", "verify", token2, "--config", setup["config"], check=False)
    assert unknown.returncode == 1 and "401 unknown signing key" in unknown.stdout and "'k2'" in unknown.stdout
    both = cli("token", "verify", token2, "--config", setup["config"], "--public-key",
               f"k2={tmp_path / 'sig' / 'k2.pub.pem'}")
    assert "key k2" in both.stdout
    none = cli("token", "verify", token2, check=False)
    assert none.returncode == 2 and "no public keys" in none.stderr


def test_token_issue_errors(setup: dict, tmp_path: Path, cli: Cli) -> None:
    out = cli("token", "issue", "--user", "u", "--track", "t", check=False)
    assert out.returncode == 2 and "private_key_file is not set" in out.stderr
    out = cli("token", "issue", "--config", setup["config"], "--user", "u", "--track", "../x", check=False)
    assert out.returncode == 2 and "not a track id" in out.stderr and not out.stdout
    out = cli("token", "issue", "--config", setup["config"], "--user", "u", "--track", "t", "--bind-ip", "x",
              check=False)
    assert out.returncode == 2 and "not an IP address" in out.stderr
    out = cli("token", "issue", "--config", setup["config"], "--user", "u", "--track", "t", "--ttl", "0", check=False)
    assert out.returncode == 2 and "ttl" in out.stderr
    pub = str(setup["dir"] / "signing" / "k1.pub.pem")
    out = cli("token", "issue", "--private-key", pub, "--key-id", "k1", "--user", "u", "--track", "t", check=False)
    assert out.returncode == 2 and "not an unencrypted PEM private key" in out.stderr
    private_pem = (setup["dir"] / "signing" / "k1.pem").read_text()
    assert private_pem.splitlines()[1] not in out.stderr
