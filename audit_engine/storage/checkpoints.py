"""Signed checkpoints in the C2SP ``tlog-checkpoint`` / ``signed-note`` text format (Ed25519).

The groundwork of issue 14's signed checkpoints: what a checkpoint says and how it is signed and
checked, apart from when the writer makes one. A checkpoint commits to a trail's Merkle tree
(:mod:`audit_engine.storage.merkle`) at a size; its text is the C2SP one, so tools of the
transparency-log world can read it::

    <origin>                   the trail's identity
    <size>                     entries so far, purged ones included (decimal)
    <root>                     the tree head, base64
    head <hex>                 extension lines: the chain's head hash at that size, the time
    time <ISO-8601>

    — <key name> <base64(key id (4 bytes) || Ed25519 signature over the lines above)>

The key id is the first four bytes of SHA-256(key name || "\\n" || 0x01 || public key), as the
signed-note format defines for Ed25519.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["Checkpoint", "CheckpointError", "key_id", "parse", "sign", "verify"]

_ED25519 = b"\x01"  # the signed-note signature type of Ed25519
_DASH = "\u2014"  # the em dash that starts a signature line
_SIZE = re.compile(r"0|[1-9][0-9]*")  # ASCII decimal, no leading zero (C2SP tlog-checkpoint)
_ROOT_BYTES = 32  # a SHA-256 tree head


class CheckpointError(ValueError):
    """A checkpoint that does not parse, or whose signature does not verify: says which."""


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint commits to."""

    origin: str
    size: int
    root: bytes
    head: str
    time: str

    def body(self) -> str:
        """The signed text: the note's lines up to (not including) the blank line."""
        for name, value in (("origin", self.origin), ("head", self.head), ("time", self.time)):
            if not value or "\n" in value or value != value.strip():
                raise CheckpointError(f"a checkpoint's {name} must be one line of text")
        if self.size < 0:
            raise CheckpointError(f"a checkpoint's size must be zero or more (got {self.size})")
        root = base64.b64encode(self.root).decode("ascii")
        return f"{self.origin}\n{self.size}\n{root}\nhead {self.head}\ntime {self.time}\n"


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(key_name: str, public_key: Ed25519PublicKey) -> bytes:
    """The four bytes that name ``public_key`` in a signature line."""
    digest = hashlib.sha256(key_name.encode("utf-8") + b"\n" + _ED25519 + _raw(public_key))
    return digest.digest()[:4]


def sign(checkpoint: Checkpoint, key_name: str, private_key: Ed25519PrivateKey) -> str:
    """The signed note of ``checkpoint``: its body, a blank line, one signature line."""
    if not key_name or any(c.isspace() for c in key_name) or "+" in key_name:
        raise CheckpointError(f"a key name is one word without '+' (got {key_name!r})")
    body = checkpoint.body()
    signature = private_key.sign(body.encode("utf-8"))
    blob = key_id(key_name, private_key.public_key()) + signature
    return f"{body}\n{_DASH} {key_name} {base64.b64encode(blob).decode('ascii')}\n"


def verify(note: str, key_name: str, public_key: Ed25519PublicKey) -> Checkpoint:
    """The checkpoint a signed ``note`` holds, once a signature by ``key_name`` verifies.

    Raises :class:`CheckpointError` saying what is wrong: the text, a missing signature by that
    key, or a signature that does not match (a changed byte anywhere in the note).
    """
    body, signatures = _split(note)
    wanted = key_id(key_name, public_key)
    for name, blob in signatures:
        if name != key_name or blob[:4] != wanted:
            continue  # another key's (a note may carry several)
        try:
            public_key.verify(blob[4:], body.encode("utf-8"))
        except InvalidSignature:
            raise CheckpointError(
                f"the signature of {key_name} does not match the checkpoint's text"
            ) from None
        return _parse(body)
    raise CheckpointError(f"the checkpoint carries no signature by {key_name} with that key")


def parse(note: str) -> Checkpoint:
    """The checkpoint a signed ``note`` says it holds, its signatures NOT checked: for choosing
    a checkpoint only. Raises :class:`CheckpointError` when the note is not well formed."""
    return _parse(_split(note)[0])


def _split(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    """The signed text and the (key name, key id + signature) of each signature line.

    Strict, as C2SP signed-note parsers are (Go's ``note.Open``): the text, exactly one blank
    line, then only signature lines, each ending in one newline — so no byte outside the signed
    text can change while the note still verifies."""
    body, blank, rest = note.partition("\n\n")
    if not blank or not body:
        raise CheckpointError("not a signed note: no blank line between the text and signatures")
    if not rest.endswith("\n"):
        raise CheckpointError("a signed note ends with a signature line and one newline")
    signatures = []
    for line in rest[:-1].split("\n"):
        name, _, encoded = line.removeprefix(f"{_DASH} ").rpartition(" ")
        try:
            blob = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            blob = b""
        if not line.startswith(f"{_DASH} ") or not _good_name(name) or len(blob) < 5:
            raise CheckpointError(
                f"not a signed note: after the text and one blank line come only signature "
                f"lines ('{_DASH} <key name> <base64>'), got {line[:80]!r}"
            )
        signatures.append((name, blob))
    return body + "\n", signatures


def _good_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


def _parse(body: str) -> Checkpoint:
    lines = body.split("\n")[:-1]
    if len(lines) != 5 or not lines[3].startswith("head ") or not lines[4].startswith("time "):
        raise CheckpointError("a checkpoint has five lines: origin, size, root, head, time")
    origin, size_text, root_text = lines[:3]
    if not _SIZE.fullmatch(size_text):
        raise CheckpointError(f"a checkpoint's size must be a decimal number (got {size_text!r})")
    try:
        root = base64.b64decode(root_text, validate=True)
    except binascii.Error:
        root = b""
    if len(root) != _ROOT_BYTES:
        raise CheckpointError(f"a checkpoint's root must be {_ROOT_BYTES} bytes in base64")
    return Checkpoint(
        origin=origin, size=int(size_text), root=root, head=lines[3][5:], time=lines[4][5:]
    )
