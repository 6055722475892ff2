"""The secrets of tamper evidence: chain keys (the keyed chain) and the Ed25519 signing pair.

A chain key file (setting ``chain_key_file``) is UTF-8 text, one key per line as 64 hex
characters (32 bytes); blank lines and ``#`` comments are ignored. The FIRST key writes; every
key verifies, so a rotation puts the new key first and keeps the old ones below it. A key is
known by its id, the first 8 bytes (16 hex) of HMAC-SHA256(key, "audit-engine chain key id"):
safe to store beside the rows, it tells which key hashed them without revealing it.

The signing pair: ``signing.key`` is an Ed25519 private key in PEM (PKCS8, unencrypted),
``signing.pub`` its public key in PEM (SubjectPublicKeyInfo). Signing needs the optional
``cryptography`` package (``pip install 'audit-engine[signing]'``), imported on first use like
psycopg, so the keyed chain works without it.

A secret file readable or writable by group or others is refused, as ssh refuses such a private
key. No message or log of this module ever holds key material: a bad line is named by its
number only.
"""

from __future__ import annotations

import errno
import hmac
import importlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from audit_engine.errors import SettingsError
from audit_engine.settings import env_var

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "CHAIN_KEY_NAME",
    "SIGNING_EXTRA",
    "SIGNING_KEY_NAME",
    "SIGNING_NOTE_KEY",
    "SIGNING_PUB_NAME",
    "ChainKey",
    "ChainKeys",
    "chain_key_id",
    "generate_keys",
    "key_file_kind",
    "load_chain_keys",
    "load_public_key",
    "load_signing_key",
]

CHAIN_KEY_NAME = "chain.key"
SIGNING_KEY_NAME = "signing.key"
SIGNING_PUB_NAME = "signing.pub"
# The key name in a checkpoint's signature line (C2SP signed note).
SIGNING_NOTE_KEY = "audit-engine"
SIGNING_EXTRA = "pip install 'audit-engine[signing]'"

_KEY_BYTES = 32
_KEY_ID_LABEL = b"audit-engine chain key id"
_HEX = frozenset("0123456789abcdefABCDEF")
# keygen's first line, and a PEM key's armour at the start of a line (any algorithm, encrypted
# or not: what is at stake is that it is some key).
_CHAIN_HEADER = b"# audit-engine chain key"
_PEM_KEY = re.compile(rb"^-----BEGIN (?:[A-Z0-9]+ )*(PRIVATE|PUBLIC) KEY-----", re.MULTILINE)
# Other key and certificate files an --output must not replace: any PEM armour (a certificate,
# a CSR, an OpenSSH key), an SSH public key or authorized_keys line.
_PEM_OTHER = re.compile(rb"^-----BEGIN [A-Z0-9 ]+-----", re.MULTILINE)
_SSH_PUBLIC = re.compile(
    rb"^(?:\S+ )?(?:ssh-(?:rsa|dss|ed25519)|ecdsa-sha2-\S+|sk-\S+@openssh\.com) [A-Za-z0-9+/]+=*",
    re.MULTILINE,
)


def chain_key_id(key: bytes) -> str:
    """The id of a chain key (16 hex characters), stored with the rows it hashed."""
    return hmac.digest(key, _KEY_ID_LABEL, "sha256")[:8].hex()


@dataclass(frozen=True)
class ChainKey:
    """One chain key and its id. ``repr`` never shows the key."""

    id: str
    secret: bytes

    def __repr__(self) -> str:
        return f"ChainKey(id={self.id!r})"


@dataclass(frozen=True)
class ChainKeys:
    """The keys of a chain key file: the first writes, every one verifies."""

    keys: tuple[ChainKey, ...]
    path: Path

    @property
    def writer(self) -> ChainKey:
        """The key new rows are hashed with (the file's first)."""
        return self.keys[0]

    def get(self, key_id: str) -> bytes | None:
        """The key whose id is ``key_id``, or None when the file does not hold it."""
        for key in self.keys:
            if key.id == key_id:
                return key.secret
        return None

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(key.id for key in self.keys)

    def __repr__(self) -> str:
        return f"ChainKeys(path={str(self.path)!r}, ids={self.ids!r})"


def _check_private(path: Path, setting: str) -> None:
    # Like ssh: a secret others can read (or replace) is no secret; say how to fix it.
    if os.name == "nt":
        return  # POSIX modes mean nothing there; the ACLs are the operator's
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise SettingsError(f"{setting} {path} does not exist") from None
    except OSError as exc:
        raise SettingsError(f"{setting} {path} cannot be read: {exc.strerror}") from None
    if mode & 0o077:
        how = "readable" if mode & 0o044 else "writable"
        raise SettingsError(
            f"{setting} {path} is {how} by other users (mode {mode:04o}): chmod 600 {path}"
        )


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SettingsError(f"{setting} {path} does not exist") from None
    except IsADirectoryError:
        raise SettingsError(f"{setting} {path} is a directory, not a key file") from None
    except OSError as exc:
        raise SettingsError(f"{setting} {path} cannot be read: {exc.strerror}") from None


def chain_keys_from(path: str | os.PathLike[str] | None) -> ChainKeys | None:
    """The keys of ``path``; with None, of ``AUDIT_TRAIL_CHAIN_KEY_FILE`` if set; else None."""
    if path is None:
        path = os.environ.get(env_var("chain_key_file")) or None
    return None if path is None else load_chain_keys(path)


def load_chain_keys(path: str | os.PathLike[str], setting: str = "chain_key_file") -> ChainKeys:
    """The keys of the chain key file at ``path``.

    Raises :class:`~audit_engine.errors.SettingsError` naming ``setting`` and the path when the
    file is missing, open to other users, holds no key or a line that is not one.
    """
    file = Path(path)
    _check_private(file, setting)
    data = _read(file, setting)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SettingsError(f"{setting} {file} is not UTF-8 text") from None
    keys: list[ChainKey] = []
    for number, line in enumerate(text.splitlines(), start=1):
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        if not _is_key(word):
            # The line itself is never shown: it may be a key with a typo.
            raise SettingsError(
                f"{setting} {file} line {number} is not a key: each key is one line of "
                f"{2 * _KEY_BYTES} hex characters ({_KEY_BYTES} bytes)"
            )
        secret = bytes.fromhex(word)
        keys.append(ChainKey(id=chain_key_id(secret), secret=secret))
    if not keys:
        raise SettingsError(
            f"{setting} {file} holds no key (audit-engine keygen --out DIR writes one)"
        )
    return ChainKeys(keys=tuple(keys), path=file)


def _is_key(word: str) -> bool:
    return len(word) == 2 * _KEY_BYTES and _HEX.issuperset(word)


def key_file_kind(head: bytes, *, whole: bool) -> str | None:
    """What key file the bytes ``head`` look like: ``"a chain key file"`` (keygen's first line,
    or lines :func:`load_chain_keys` accepts with at least one key), ``"a PEM private key"``,
    ``"a PEM public key"``, ``"a PEM key or certificate"``, ``"an SSH public key"``; None for
    anything else.

    ``head`` is the start of a file (``whole``: all of it); a line it cuts is not judged. For a
    command that must never replace a key, whether configured or not (``--output``).
    """
    if head.startswith(_CHAIN_HEADER):
        return "a chain key file"
    pem = _PEM_KEY.search(head)
    if pem is not None:
        return f"a PEM {pem.group(1).decode('ascii').lower()} key"
    if _PEM_OTHER.search(head):
        return "a PEM key or certificate"
    if _SSH_PUBLIC.search(head):
        return "an SSH public key"
    lines = head.splitlines()
    if not whole and lines and not head.endswith((b"\n", b"\r")):
        lines.pop()  # cut by the read: it may be a key or anything
    keys = 0
    for line in lines:
        word = line.strip()
        if not word or word.startswith(b"#"):
            continue
        if not _is_key(word.decode("latin-1")):
            return None
        keys += 1
    return "a chain key file" if keys else None


def _import(module: str, what: str) -> ModuleType:
    # cryptography is optional (the signing extra): its absence is a setting to fix, named;
    # any other import error is a bug and stays one.
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith("cryptography"):
            raise
        raise SettingsError(f"{what} needs the cryptography package: {SIGNING_EXTRA}") from None


def _crypto(what: str) -> dict[str, ModuleType]:
    """The parts of ``cryptography`` signing uses, imported on first use."""
    return {
        "serialization": _import("cryptography.hazmat.primitives.serialization", what),
        "ed25519": _import("cryptography.hazmat.primitives.asymmetric.ed25519", what),
    }


def checkpoint_notes(what: str) -> ModuleType:
    """:mod:`audit_engine.storage.checkpoints` (it imports cryptography), imported on first use;
    ``what`` names the feature in the error when cryptography is missing."""
    return _import("audit_engine.storage.checkpoints", what)


def load_signing_key(
    path: str | os.PathLike[str], setting: str = "signing_key_file"
) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file at ``path`` (PKCS8, unencrypted)."""
    file = Path(path)
    crypto = _crypto(setting)
    _check_private(file, setting)
    data = _read(file, setting)
    try:
        key: Any = crypto["serialization"].load_pem_private_key(data, password=None)
    except TypeError:  # a password-protected key
        raise SettingsError(
            f"{setting} {file} is encrypted: the engine reads an unencrypted PKCS8 PEM key "
            "(audit-engine keygen --out DIR writes one)"
        ) from None
    except ValueError:  # the library's text is not shown: it could quote the file
        raise SettingsError(
            f"{setting} {file} is not a PEM private key (audit-engine keygen --out DIR writes one)"
        ) from None
    if not isinstance(key, crypto["ed25519"].Ed25519PrivateKey):
        raise SettingsError(f"{setting} {file} is not an Ed25519 key")
    private: Ed25519PrivateKey = key
    return private


def load_public_key(
    path: str | os.PathLike[str], setting: str = "--public-key"
) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM file at ``path`` (SubjectPublicKeyInfo)."""
    file = Path(path)
    crypto = _crypto(setting)
    data = _read(file, setting)
    try:
        key: Any = crypto["serialization"].load_pem_public_key(data)
    except ValueError:
        raise SettingsError(
            f"{setting} {file} is not a PEM public key (signing.pub of audit-engine keygen)"
        ) from None
    if not isinstance(key, crypto["ed25519"].Ed25519PublicKey):
        raise SettingsError(f"{setting} {file} is not an Ed25519 public key")
    public: Ed25519PublicKey = key
    return public


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never overwrite, even a file created since the check; the mode is set at creation,
    # so a secret is never readable by others, even for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits off the public key's mode
        if os.write(fd, data) != len(data):  # a full disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink()  # no half-written key left behind: keygen can simply run again
        raise
    os.close(fd)


def generate_keys(out_dir: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """Write a new chain key and Ed25519 signing pair into ``out_dir``.

    Returns the paths of ``chain.key``, ``signing.key`` (both 0600) and ``signing.pub`` (0644).
    The directory is created 0700 when missing. An existing file of either name is never
    overwritten: :class:`~audit_engine.errors.SettingsError` names it and nothing is written.
    """
    crypto = _crypto("keygen")
    directory = Path(out_dir)
    paths = (directory / CHAIN_KEY_NAME, directory / SIGNING_KEY_NAME, directory / SIGNING_PUB_NAME)
    for path in paths:
        if path.exists() or path.is_symlink():
            raise SettingsError(
                f"{path} already exists: keygen never overwrites a key (move it away, or "
                "choose another --out directory)"
            )
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(f"cannot create the key directory {directory}: {exc}") from None
    serialization = crypto["serialization"]
    private = crypto["ed25519"].Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    chain_text = (
        "# audit-engine chain key: the first key writes, every key verifies.\n"
        "# Rotation: put a new key on the first line and keep the old ones below it.\n"
        f"{os.urandom(_KEY_BYTES).hex()}\n"
    )
    written: list[Path] = []
    try:
        for path, data, mode in zip(
            paths,
            (chain_text.encode("ascii"), private_pem, public_pem),
            (0o600, 0o600, 0o644),
            strict=True,
        ):
            _write_new(path, data, mode)
            written.append(path)
    except OSError as exc:
        for path in written:  # all three or none: a partial set would only confuse
            path.unlink(missing_ok=True)
        if isinstance(exc, FileExistsError):
            raise SettingsError(
                f"{exc.filename} already exists: keygen never overwrites a key"
            ) from None
        raise SettingsError(f"cannot write the keys into {directory}: {exc.strerror}") from None
    return paths
