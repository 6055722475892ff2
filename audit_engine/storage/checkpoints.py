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
signed-note format defines for Ed25519. Nothing in the engine makes or checks checkpoints yet.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["Checkpoint", "CheckpointError", "key_id", "sign", "verify"]

_ED25519 = b"\x01"  # the signed-note signature type of Ed25519
_DASH = "\u2014"  # the em dash that starts a signature line


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
    key, or a signature that does not match (a changed byte anywhere in the body).
    """
    body, blank, signatures = note.partition("\n\n")
    if not blank or not body:
        raise CheckpointError("not a signed note: no blank line between the text and signatures")
    body += "\n"
    wanted = key_id(key_name, public_key)
    for line in signatures.splitlines():
        prefix = f"{_DASH} {key_name} "
        if not line.startswith(prefix):
            continue
        try:
            blob = base64.b64decode(line[len(prefix) :], validate=True)
        except ValueError:
            raise CheckpointError(f"the signature line of {key_name} is not base64") from None
        if blob[:4] != wanted:
            continue  # another key of the same name
        try:
            public_key.verify(blob[4:], body.encode("utf-8"))
        except InvalidSignature:
            raise CheckpointError(
                f"the signature of {key_name} does not match the checkpoint's text"
            ) from None
        return _parse(body)
    raise CheckpointError(f"the checkpoint carries no signature by {key_name} with that key")


def _parse(body: str) -> Checkpoint:
    lines = body.split("\n")[:-1]
    if len(lines) != 5 or not lines[3].startswith("head ") or not lines[4].startswith("time "):
        raise CheckpointError("a checkpoint has five lines: origin, size, root, head, time")
    origin, size_text, root_text = lines[:3]
    if not size_text.isdigit():
        raise CheckpointError(f"a checkpoint's size must be a decimal number (got {size_text!r})")
    try:
        root = base64.b64decode(root_text, validate=True)
    except ValueError:
        raise CheckpointError("a checkpoint's root must be base64") from None
    return Checkpoint(
        origin=origin, size=int(size_text), root=root, head=lines[3][5:], time=lines[4][5:]
    )
