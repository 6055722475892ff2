"""Signed checkpoints in the C2SP signed-note format: they verify with the right key and say
precisely why not otherwise."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit_engine.storage import merkle
from audit_engine.storage.checkpoints import Checkpoint, CheckpointError, key_id, sign, verify

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
CHECKPOINT = Checkpoint(
    origin="audit.example/notes",
    size=3,
    root=merkle.root([b"a", b"b", b"c"]),
    head="9f" * 32,
    time="2026-12-01T20:00:00Z",
)


def test_a_signed_checkpoint_is_the_c2sp_note_and_verifies() -> None:
    note = sign(CHECKPOINT, "audit.example", KEY)

    body, signature = note.split("\n\n")
    root = base64.b64encode(CHECKPOINT.root).decode()
    assert body == f"audit.example/notes\n3\n{root}\nhead {'9f' * 32}\ntime 2026-12-01T20:00:00Z"
    assert signature.startswith("\u2014 audit.example ")
    blob = base64.b64decode(signature.split(" ")[2])
    assert blob[:4] == key_id("audit.example", KEY.public_key())
    assert len(blob) == 4 + 64
    assert verify(note, "audit.example", KEY.public_key()) == CHECKPOINT


@pytest.mark.parametrize(
    ("old", "new"),
    [("\n3\n", "\n4\n"), ("head 9f", "head 8f"), ("notes", "notez"), ("20:00", "21:00")],
)
def test_a_changed_byte_of_the_text_fails_the_signature(old: str, new: str) -> None:
    note = sign(CHECKPOINT, "audit.example", KEY).replace(old, new, 1)

    with pytest.raises(CheckpointError, match="does not match the checkpoint's text"):
        verify(note, "audit.example", KEY.public_key())


def test_another_key_or_key_name_finds_no_signature() -> None:
    note = sign(CHECKPOINT, "audit.example", KEY)
    other = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))).public_key()

    with pytest.raises(CheckpointError, match=r"no signature by audit\.example with that key"):
        verify(note, "audit.example", other)
    with pytest.raises(CheckpointError, match="no signature by witness"):
        verify(note, "witness", KEY.public_key())


@pytest.mark.parametrize(
    ("note", "why"),
    [
        ("just text\n", "not a signed note"),
        ("a\nb\n\n\u2014 audit.example !!!\n", "not base64"),
    ],
)
def test_a_note_that_does_not_parse_says_why(note: str, why: str) -> None:
    with pytest.raises(CheckpointError, match=why):
        verify(note, "audit.example", KEY.public_key())


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"origin": "two\nlines"}, "origin must be one line"),
        ({"head": ""}, "head must be one line"),
        ({"size": -1}, "size must be zero or more"),
    ],
)
def test_a_checkpoint_that_cannot_be_written_is_refused(
    changes: dict[str, object], why: str
) -> None:
    bad = Checkpoint(**{**CHECKPOINT.__dict__, **changes})  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=why):
        sign(bad, "audit.example", KEY)


def test_a_key_name_is_one_word() -> None:
    with pytest.raises(CheckpointError, match="a key name is one word"):
        sign(CHECKPOINT, "audit example", KEY)


def test_a_signed_text_that_is_not_a_checkpoint_is_refused() -> None:
    body = "audit.example/notes\nmany\nAAAA\nhead x\ntime y\n"
    signature = KEY.sign(body.encode())
    blob = base64.b64encode(key_id("audit.example", KEY.public_key()) + signature).decode()
    note = f"{body}\n\u2014 audit.example {blob}\n"

    with pytest.raises(CheckpointError, match="size must be a decimal number"):
        verify(note, "audit.example", KEY.public_key())


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("origin\n3\nAAAA\nhead x\n", "a checkpoint has five lines"),
        ("origin\n3\n!!!!\nhead x\ntime y\n", "root must be base64"),
    ],
)
def test_other_signed_texts_that_are_not_checkpoints_are_refused(body: str, why: str) -> None:
    signature = KEY.sign(body.encode())
    blob = base64.b64encode(key_id("audit.example", KEY.public_key()) + signature).decode()

    with pytest.raises(CheckpointError, match=why):
        verify(f"{body}\n\u2014 audit.example {blob}\n", "audit.example", KEY.public_key())
