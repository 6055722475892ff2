"""Chain key files and the Ed25519 signing pair (audit_engine.storage.keys)."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit_engine.errors import SettingsError
from audit_engine.storage import keys

KEY_A = "11" * 32
KEY_B = "ab" * 32


def _secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def test_key_id_is_the_documented_hmac() -> None:
    secret = bytes.fromhex(KEY_A)
    expected = hmac.new(secret, b"audit-engine chain key id", hashlib.sha256).hexdigest()[:16]
    assert keys.chain_key_id(secret) == expected
    assert len(expected) == 16


def test_first_key_writes_every_key_verifies(tmp_path: Path) -> None:
    path = _secret(tmp_path / "chain.key", f"# new key first\n\n{KEY_B}\n  {KEY_A.upper()}  \n")
    loaded = keys.load_chain_keys(path)
    assert loaded.writer.secret == bytes.fromhex(KEY_B)
    assert loaded.ids == (
        keys.chain_key_id(bytes.fromhex(KEY_B)),
        keys.chain_key_id(bytes.fromhex(KEY_A)),
    )
    assert loaded.get(loaded.ids[1]) == bytes.fromhex(KEY_A)
    assert loaded.get("0" * 16) is None
    # No key material in a repr (they end up in logs and tracebacks).
    assert KEY_A not in repr(loaded)
    assert KEY_B not in repr(loaded)
    assert KEY_B not in repr(loaded.writer)


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
@pytest.mark.parametrize(
    ("mode", "how"), [(0o644, "readable"), (0o640, "readable"), (0o620, "writable")]
)
def test_a_key_file_open_to_others_is_refused_like_ssh(tmp_path: Path, mode: int, how: str) -> None:
    path = _secret(tmp_path / "chain.key", f"{KEY_A}\n", mode)
    with pytest.raises(SettingsError) as caught:
        keys.load_chain_keys(path)
    assert str(caught.value) == (
        f"chain_key_file {path} is {how} by other users (mode {mode:04o}): chmod 600 {path}"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no key (audit-engine keygen --out DIR writes one)"),
        ("# only a comment\n\n", "holds no key (audit-engine keygen --out DIR writes one)"),
        (
            f"{KEY_A}\n{KEY_B[:-1]}\n",
            "line 2 is not a key: each key is one line of 64 hex characters (32 bytes)",
        ),
        (
            f"{KEY_A[:-1]}g\n",
            "line 1 is not a key: each key is one line of 64 hex characters (32 bytes)",
        ),
    ],
)
def test_a_bad_key_file_names_the_setting_path_and_line_never_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = _secret(tmp_path / "chain.key", text)
    with pytest.raises(SettingsError) as caught:
        keys.load_chain_keys(path)
    assert str(caught.value) == f"chain_key_file {path} {message}"
    assert KEY_A[:-1] not in str(caught.value)
    assert KEY_B[:-1] not in str(caught.value)


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    with pytest.raises(SettingsError, match=rf"^chain_key_file {missing} does not exist$"):
        keys.load_chain_keys(missing)


def test_generate_keys_writes_three_files_with_safe_modes(tmp_path: Path) -> None:
    out = tmp_path / "new" / "keys"
    chain, signing, pub = keys.generate_keys(out)
    assert (chain, signing, pub) == (out / "chain.key", out / "signing.key", out / "signing.pub")
    if os.name != "nt":
        assert stat.S_IMODE(out.stat().st_mode) == 0o700
        assert stat.S_IMODE(chain.stat().st_mode) == 0o600
        assert stat.S_IMODE(signing.stat().st_mode) == 0o600
        assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    loaded = keys.load_chain_keys(chain)
    assert len(loaded.keys) == 1
    private = keys.load_signing_key(signing)
    public = keys.load_public_key(pub)
    assert isinstance(private, Ed25519PrivateKey)
    public.verify(private.sign(b"note"), b"note")  # raises if the pair does not match
    # Two runs make different keys.
    again = keys.generate_keys(tmp_path / "other")
    assert keys.load_chain_keys(again[0]).ids != loaded.ids


def test_generate_keys_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "signing.pub").write_text("mine")
    with pytest.raises(SettingsError) as caught:
        keys.generate_keys(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / 'signing.pub'} already exists")
    assert not (tmp_path / "chain.key").exists()  # nothing written half
    assert (tmp_path / "signing.pub").read_text() == "mine"


def test_bad_signing_and_public_keys_are_named(tmp_path: Path) -> None:
    bad = _secret(tmp_path / "signing.key", "not a key\n")
    with pytest.raises(SettingsError, match=rf"^signing_key_file {bad} is not a PEM private key"):
        keys.load_signing_key(bad)
    _, signing, pub = keys.generate_keys(tmp_path / "k")
    signing.chmod(0o644)
    if os.name != "nt":
        with pytest.raises(SettingsError, match="is readable by other users"):
            keys.load_signing_key(signing)
    with pytest.raises(SettingsError, match=rf"^--public-key {signing} is not a PEM public key"):
        keys.load_public_key(signing)
    with pytest.raises(SettingsError, match=rf"^--public-key {bad} is not a PEM public key"):
        keys.load_public_key(bad)
    assert keys.load_public_key(pub, setting="public_key") is not None
