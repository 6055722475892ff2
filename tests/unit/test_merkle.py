"""The RFC 6962 Merkle tree: the Certificate Transparency test vectors, and proofs that verify
exactly when nothing was changed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit_engine.storage import merkle

# The leaves and tree heads of the RFC 6962 reference tests (certificate-transparency).
LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


@pytest.mark.parametrize("size", range(1, 9))
def test_the_tree_heads_are_the_reference_ones(size: int) -> None:
    assert merkle.root(LEAVES[:size]).hex() == ROOTS[size - 1]


def test_the_empty_tree_head_is_the_hash_of_nothing() -> None:
    assert merkle.root([]).hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_an_inclusion_proof_is_the_reference_one() -> None:
    assert [node.hex() for node in merkle.inclusion_proof(0, LEAVES)] == [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ]


def test_a_consistency_proof_is_the_reference_one() -> None:
    assert [node.hex() for node in merkle.consistency_proof(6, LEAVES)] == [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]


trees = st.lists(st.binary(max_size=8), min_size=1, max_size=70)


@given(trees, st.data())
def test_every_leaf_is_proven_in_its_tree_and_nothing_else_is(
    leaves: list[bytes], data: st.DataObject
) -> None:
    size = len(leaves)
    head = merkle.root(leaves)
    index = data.draw(st.integers(0, size - 1))
    path = merkle.inclusion_proof(index, leaves)

    assert merkle.verify_inclusion(index, size, leaves[index], path, head)
    assert not merkle.verify_inclusion(index, size, leaves[index] + b"!", path, head)
    assert not merkle.verify_inclusion(index, size, leaves[index], path, merkle.root(leaves[1:]))
    if path:
        bent = data.draw(st.integers(0, len(path) - 1))
        flipped = bytes([path[bent][0] ^ 1]) + path[bent][1:]
        forged = [*path[:bent], flipped, *path[bent + 1 :]]
        assert not merkle.verify_inclusion(index, size, leaves[index], forged, head)


@given(trees, st.data())
def test_a_tree_proves_it_extends_each_of_its_prefixes_and_no_other_tree(
    leaves: list[bytes], data: st.DataObject
) -> None:
    size = len(leaves)
    old = data.draw(st.integers(1, size))
    proof = merkle.consistency_proof(old, leaves)
    old_head, new_head = merkle.root(leaves[:old]), merkle.root(leaves)

    assert merkle.verify_consistency(old, size, old_head, new_head, proof)
    rewritten = merkle.root([*leaves[: old - 1], leaves[old - 1] + b"!"])
    assert not merkle.verify_consistency(old, size, rewritten, new_head, proof)
    if old < size:
        assert not merkle.verify_consistency(old, size, old_head, old_head, proof)


@pytest.mark.parametrize(("index", "size"), [(-1, 3), (3, 3), (0, 0)])
def test_a_leaf_outside_the_tree_has_no_proof(index: int, size: int) -> None:
    with pytest.raises(ValueError, match=f"leaf index {index} is not in a tree of {size} leaves"):
        merkle.inclusion_proof(index, LEAVES[:size])
    assert not merkle.verify_inclusion(index, size, b"", [], merkle.EMPTY_ROOT)


@pytest.mark.parametrize(("old", "new"), [(0, 3), (4, 3)])
def test_a_consistency_proof_needs_a_non_empty_prefix(old: int, new: int) -> None:
    with pytest.raises(ValueError, match="needs 0 < old size <= new size"):
        merkle.consistency_proof(old, LEAVES[:new])
    assert not merkle.verify_consistency(old, new, b"", b"", [])


def test_equal_sizes_are_consistent_only_with_the_same_head_and_no_proof() -> None:
    head = merkle.root(LEAVES)
    assert merkle.verify_consistency(8, 8, head, head, [])
    assert not merkle.verify_consistency(8, 8, head, merkle.root(LEAVES[:7]), [])
    assert not merkle.verify_consistency(8, 8, head, head, [head])


def test_a_proof_with_a_node_too_many_or_too_few_is_refused() -> None:
    head = merkle.root(LEAVES)
    path = merkle.inclusion_proof(5, LEAVES)
    assert not merkle.verify_inclusion(5, 8, LEAVES[5], [*path, head], head)
    assert not merkle.verify_inclusion(5, 8, LEAVES[5], path[:-1], head)

    proof = merkle.consistency_proof(6, LEAVES)
    old = merkle.root(LEAVES[:6])
    assert not merkle.verify_consistency(6, 8, old, head, [*proof, head])
    assert not merkle.verify_consistency(6, 8, old, head, proof[:-1])
    assert not merkle.verify_consistency(6, 8, old, head, [])
    assert not merkle.verify_consistency(3, 4, merkle.root(LEAVES[:3]), merkle.root(LEAVES[:4]), [])


# -- the frontier ------------------------------------------------------------------------------

sizes = st.lists(st.binary(max_size=4), max_size=140)


@given(sizes)
def test_a_frontier_has_the_root_of_the_list_at_every_size(leaves: list[bytes]) -> None:
    frontier = merkle.Frontier()
    assert frontier.root() == merkle.EMPTY_ROOT
    for size, leaf in enumerate(leaves, start=1):
        frontier.append(leaf)
        assert frontier.size == size
        assert len(frontier.nodes) == size.bit_count()
        assert frontier.root() == merkle.root(leaves[:size])
    extended = merkle.Frontier(base=7)
    extended.extend(leaves)
    assert extended.nodes == frontier.nodes
    assert extended.head_id == 7 + len(leaves)


@pytest.mark.parametrize("size", range(9))
def test_a_frontier_has_the_reference_heads(size: int) -> None:
    frontier = merkle.Frontier()
    frontier.extend(LEAVES[:size])
    assert frontier.root().hex() == ([merkle.EMPTY_ROOT.hex(), *ROOTS])[size]


@given(sizes, st.data())
def test_from_any_cut_a_frontier_gives_every_later_root_and_proof(
    leaves: list[bytes], data: st.DataObject
) -> None:
    # The cut is a purge point or a checkpoint: what comes before it is only the frontier.
    cut = data.draw(st.integers(0, len(leaves)))
    frontier = merkle.Frontier(base=3)
    frontier.extend(leaves[:cut])
    stored = merkle.Frontier.from_text(frontier.to_text())
    assert stored == frontier
    later = leaves[cut:]

    assert merkle.root_after(stored, later) == merkle.root(leaves)
    assert stored == frontier  # root_after leaves its frontier as it was
    if cut == len(leaves):
        return
    size = data.draw(st.integers(cut + 1, len(leaves)))
    index = data.draw(st.integers(cut, size - 1))
    path = merkle.inclusion_proof_after(stored, later, index, size)
    assert path == merkle.inclusion_proof(index, leaves[:size])
    assert merkle.verify_inclusion(index, size, leaves[index], path, merkle.root(leaves[:size]))


def test_a_leaf_inside_the_frontier_has_no_proof_from_it() -> None:
    frontier = merkle.Frontier()
    frontier.extend(LEAVES[:5])
    with pytest.raises(ValueError, match="leaf index 4 in a tree of 8 leaves is not provable"):
        merkle.inclusion_proof_after(frontier, LEAVES[5:], 4, 8)
    with pytest.raises(ValueError, match="a frontier of 5 leaves and 3 leaves after it"):
        merkle.inclusion_proof_after(frontier, LEAVES[5:], 5, 9)


def test_the_stored_form_of_a_frontier() -> None:
    frontier = merkle.Frontier(base=10)
    frontier.extend(LEAVES[:3])
    assert json.loads(frontier.to_text()) == {
        "base": 10,
        "size": 3,
        "nodes": [node.hex() for node in frontier.nodes],
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope", "must be a JSON object"),
        ("[]", "exactly the keys base, size and nodes"),
        ('{"base": 0, "size": 1}', "exactly the keys base, size and nodes"),
        ('{"base": -1, "size": 0, "nodes": []}', "base must be an integer >= 0"),
        ('{"base": 0, "size": true, "nodes": []}', "size must be an integer >= 0"),
        ('{"base": 0, "size": 3, "nodes": ["' + "00" * 32 + '"]}', "of size 3 has 2 nodes"),
        ('{"base": 0, "size": 1, "nodes": ["xy"]}', "64 hex characters each"),
        ('{"base": 0, "size": 1, "nodes": "ab"}', "of size 1 has 1 nodes \\(got none\\)"),
    ],
)
def test_a_stored_frontier_that_does_not_add_up_is_refused(text: str, message: str) -> None:
    with pytest.raises(merkle.FrontierError, match=message):
        merkle.Frontier.from_text(text)


def test_a_stream_that_fails_part_way_leaves_the_frontier_of_the_leaves_so_far() -> None:
    def failing() -> Iterator[bytes]:
        yield from LEAVES[:5]
        raise OSError("the read failed")

    frontier = merkle.Frontier()
    with pytest.raises(OSError, match="the read failed"):
        frontier.extend(failing())
    assert frontier.size == 5
    assert frontier.root() == merkle.root(LEAVES[:5])
