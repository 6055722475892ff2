"""Signed checkpoints in the C2SP signed-note format: they verify with the right key and say
precisely why not otherwise."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit_engine.storage import merkle
from audit_engine.storage.checkpoints import (
    Checkpoint,
    CheckpointError,
    key_id,
    parse,
    sign,
    verify,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
CHECKPOINT = Checkpoint(
    origin="audit.example/notes",
    size=3,
    root=merkle.root([b"a", b"b", b"c"]),
    head="9f" * 32,
    time="2026-12-01T20:00:00Z",
)
ROOT = base64.b64encode(CHECKPOINT.root).decode()


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
        ("a\nb\n\n\u2014 audit.example !!!\n", "only signature lines"),
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
        ("origin\n3\n!!!!\nhead x\ntime y\n", "root must be 32 bytes in base64"),
        ("origin\n3\nAAAA\nhead x\ntime y\n", "root must be 32 bytes in base64"),
        (f"origin\n03\n{ROOT}\nhead x\ntime y\n", "size must be a decimal number"),
        (f"origin\n\u00b3\n{ROOT}\nhead x\ntime y\n", "size must be a decimal number"),
    ],
)
def test_other_signed_texts_that_are_not_checkpoints_are_refused(body: str, why: str) -> None:
    signature = KEY.sign(body.encode())
    blob = base64.b64encode(key_id("audit.example", KEY.public_key()) + signature).decode()

    with pytest.raises(CheckpointError, match=why):
        verify(f"{body}\n\u2014 audit.example {blob}\n", "audit.example", KEY.public_key())


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda n: n.replace("\n\n", "\n\n\n"), "only signature lines"),
        (lambda n: n + "\n", "only signature lines"),
        (lambda n: n + "\n\n", "only signature lines"),
        (lambda n: n[:-1], "ends with a signature line and one newline"),
        (lambda n: n.partition("\n\n")[0] + "\n\n", "ends with a signature line"),
        (lambda n: n.replace("\u2014 ", "- "), "only signature lines"),
        (lambda n: n.replace("\u2014 audit.example ", "\u2014 audit.example  "), "only signature"),
        (lambda n: n + "\u2014 witness AAAA\n", "only signature lines"),  # under 5 bytes
    ],
)
def test_a_note_changed_outside_its_signed_text_is_refused(
    change: Callable[[str], str], why: str
) -> None:
    # C2SP parsers refuse these (Go's note.Open): only the signed text could vary otherwise.
    note = sign(CHECKPOINT, "audit.example", KEY)
    assert verify(note, "audit.example", KEY.public_key()) == CHECKPOINT

    with pytest.raises(CheckpointError, match=why):
        verify(change(note), "audit.example", KEY.public_key())
    with pytest.raises(CheckpointError, match=why):
        parse(change(note))


def test_a_second_signature_by_another_key_is_allowed_and_parse_reads_the_text() -> None:
    witness = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    note = sign(CHECKPOINT, "audit.example", KEY)
    cosigned = note + sign(CHECKPOINT, "witness", witness).partition("\n\n")[2]

    assert verify(cosigned, "audit.example", KEY.public_key()) == CHECKPOINT
    assert verify(cosigned, "witness", witness.public_key()) == CHECKPOINT
    assert parse(cosigned) == CHECKPOINT
