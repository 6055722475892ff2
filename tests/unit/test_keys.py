"""Chain key files and the Ed25519 signing pair (audit_engine.storage.keys)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import importlib
import os
import resource
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
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


def test_a_key_path_under_a_file_cannot_be_read(tmp_path: Path) -> None:
    # Not "does not exist": the path's directory is a file, which the operator must see.
    (tmp_path / "file").write_text("x")
    path = tmp_path / "file" / "chain.key"
    with pytest.raises(SettingsError) as caught:
        keys.load_chain_keys(path)
    assert str(caught.value) == f"chain_key_file {path} cannot be read: Not a directory"
    with pytest.raises(SettingsError) as caught:
        keys.load_public_key(path)
    assert str(caught.value) == f"--public-key {path} cannot be read: Not a directory"


def test_a_directory_or_a_missing_public_key_is_named(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    with pytest.raises(SettingsError) as caught:
        keys.load_chain_keys(directory)
    assert str(caught.value) == f"chain_key_file {directory} is a directory, not a key file"
    with pytest.raises(SettingsError) as caught:
        keys.load_public_key(directory)
    assert str(caught.value) == f"--public-key {directory} is a directory, not a key file"
    # The public key is not a secret: no mode check, so the read itself finds it missing.
    with pytest.raises(SettingsError) as caught:
        keys.load_public_key(directory / "signing.pub")
    assert str(caught.value) == f"--public-key {directory / 'signing.pub'} does not exist"


def test_a_key_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "chain.key"
    path.write_bytes(b"\xff\xfe" + KEY_A.encode())
    path.chmod(0o600)
    with pytest.raises(SettingsError) as caught:
        keys.load_chain_keys(path)
    assert str(caught.value) == f"chain_key_file {path} is not UTF-8 text"


def _pem_private(key: Any, password: bytes | None = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )


def test_an_encrypted_or_non_ed25519_signing_key_is_refused(tmp_path: Path) -> None:
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(_pem_private(Ed25519PrivateKey.generate(), b"secret"))
    encrypted.chmod(0o600)
    with pytest.raises(SettingsError) as caught:
        keys.load_signing_key(encrypted)
    assert str(caught.value) == (
        f"signing_key_file {encrypted} is encrypted: the engine reads an unencrypted PKCS8 PEM "
        "key (audit-engine keygen --out DIR writes one)"
    )
    other = Ed448PrivateKey.generate()
    ed448 = tmp_path / "ed448.key"
    ed448.write_bytes(_pem_private(other))
    ed448.chmod(0o600)
    with pytest.raises(SettingsError) as caught:
        keys.load_signing_key(ed448)
    assert str(caught.value) == f"signing_key_file {ed448} is not an Ed25519 key"
    pub = tmp_path / "ed448.pub"
    pub.write_bytes(
        other.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(SettingsError) as caught:
        keys.load_public_key(pub)
    assert str(caught.value) == f"--public-key {pub} is not an Ed25519 public key"


def _without(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    """Make ``keys`` import as if the module ``missing`` were not installed."""
    real = importlib.import_module

    def import_module(name: str, package: str | None = None) -> ModuleType:
        if name.startswith("cryptography"):
            raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)
        return real(name, package)

    monkeypatch.setattr(keys.importlib, "import_module", import_module)


def test_signing_without_cryptography_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, signing, pub = keys.generate_keys(tmp_path / "k")
    _without(monkeypatch, "cryptography")
    extra = "needs the cryptography package: pip install 'audit-engine[signing]'"
    calls: list[tuple[str, Callable[[], object]]] = [
        ("signing_key_file", lambda: keys.load_signing_key(signing)),
        ("--public-key", lambda: keys.load_public_key(pub)),
        ("keygen", lambda: keys.generate_keys(tmp_path / "new")),
    ]
    for what, call in calls:
        with pytest.raises(SettingsError) as caught:
            call()
        assert str(caught.value) == f"{what} {extra}"
    assert not (tmp_path / "new").exists()


def test_a_broken_dependency_of_cryptography_is_not_reported_as_a_missing_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # cryptography installed but its compiled backend is not: the real error is the useful one.
    _without(monkeypatch, "_cffi_backend")
    with pytest.raises(ModuleNotFoundError, match="_cffi_backend"):
        keys.load_public_key(tmp_path / "signing.pub")


def test_keygen_into_a_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    out.write_text("not a directory")
    with pytest.raises(SettingsError) as caught:
        keys.generate_keys(out)
    assert str(caught.value) == (
        f"cannot create the key directory {out}: [Errno 17] File exists: '{out}'"
    )
    assert out.read_text() == "not a directory"


def test_keygen_racing_another_keygen_never_overwrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another keygen writes signing.key between the existence check and our write: O_EXCL
    # refuses to replace it, and the error names it.
    real = keys._write_new

    def racing(path: Path, data: bytes, mode: int) -> None:
        if path.name == keys.SIGNING_KEY_NAME:
            path.write_text("theirs")
        real(path, data, mode)

    monkeypatch.setattr(keys, "_write_new", racing)
    with pytest.raises(SettingsError) as caught:
        keys.generate_keys(tmp_path)
    signing = tmp_path / keys.SIGNING_KEY_NAME
    assert str(caught.value) == f"{signing} already exists: keygen never overwrites a key"
    assert signing.read_text() == "theirs"
    assert not (tmp_path / keys.SIGNING_PUB_NAME).exists()


@contextlib.contextmanager
def _file_size_limit(limit: int) -> Iterator[None]:
    """Files cannot grow past ``limit`` bytes (a full disk, as the kernel reports it: Python
    ignores SIGXFSZ, so a write past it fails with EFBIG or writes short)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.mark.skipif(os.name == "nt", reason="POSIX resource limits")
def test_keygen_that_cannot_write_says_why(tmp_path: Path) -> None:
    with _file_size_limit(0), pytest.raises(SettingsError) as caught:
        keys.generate_keys(tmp_path)
    assert str(caught.value) == f"cannot write the keys into {tmp_path}: File too large"
    # The first file was created before its write failed: it is removed, so keygen can run
    # again once there is room (all three keys or none).
    assert sorted(tmp_path.iterdir()) == []
    assert keys.generate_keys(tmp_path)[0].is_file()


def test_keygen_that_fails_half_way_leaves_no_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = keys._write_new
    calls: list[Path] = []

    def write(path: Path, data: bytes, mode: int) -> None:
        calls.append(path)
        if len(calls) == 2:  # the signing key: the disk fills up
            raise OSError(28, "No space left on device", str(path))
        real(path, data, mode)

    monkeypatch.setattr(keys, "_write_new", write)

    with pytest.raises(SettingsError) as caught:
        keys.generate_keys(tmp_path)

    assert str(caught.value) == f"cannot write the keys into {tmp_path}: No space left on device"
    assert sorted(tmp_path.iterdir()) == []  # the chain key written first is gone again
