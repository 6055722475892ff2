"""An RFC 6962 (RFC 9162 §2.1) Merkle tree: tree heads, inclusion and consistency proofs.

The groundwork of signed checkpoints and offline inclusion proofs (issue 14): a checkpoint commits
to the tree head over every entry so far, and one entry is proven to be in it by an audit path of
``log2(n)`` hashes, checked without the database. Pure functions over leaf data (bytes); the
tree's shape and hashing are the RFC's, so any RFC 6962 verifier can check what this produces:

- leaf hash ``SHA-256(0x00 || data)``, interior node ``SHA-256(0x01 || left || right)``;
- the tree of ``n`` leaves splits at ``k``, the largest power of two below ``n``;
- the empty tree's head is ``SHA-256("")``.

:class:`Frontier` keeps a growing tree in ``O(log n)`` space: the roots of the perfect subtrees
of the size's binary decomposition. It is what the trail stores (with anchors and checkpoints) so
the writer resumes without reading the trail, and what a purge leaves of the rows it deletes:
with it and the leaves after it, any later root and any later leaf's audit path are computable.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "EMPTY_ROOT",
    "Frontier",
    "FrontierError",
    "consistency_proof",
    "inclusion_proof",
    "inclusion_proof_after",
    "leaf_hash",
    "node_hash",
    "root",
    "root_after",
    "verify_consistency",
    "verify_inclusion",
]

EMPTY_ROOT = hashlib.sha256(b"").digest()
_HEX64 = re.compile(r"[0-9a-f]{64}")


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _root_of(hashes: Sequence[bytes]) -> bytes:
    # Bottom-up over leaf hashes; an odd node at the end of a level is carried up unchanged,
    # which gives exactly the RFC's left-heavy split.
    level = list(hashes)
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def root(leaves: Sequence[bytes]) -> bytes:
    """The tree head (MTH) over the leaf data ``leaves``."""
    if not leaves:
        return EMPTY_ROOT
    return _root_of([leaf_hash(leaf) for leaf in leaves])


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``leaves`` (RFC 9162 §2.1.3.1)."""
    if not 0 <= index < len(leaves):
        raise ValueError(f"leaf index {index} is not in a tree of {len(leaves)} leaves")
    return _path(index, [leaf_hash(leaf) for leaf in leaves])


def _path(m: int, hashes: list[bytes]) -> list[bytes]:
    n = len(hashes)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, hashes[:k]), _root_of(hashes[k:])]
    return [*_path(m - k, hashes[k:]), _root_of(hashes[:k])]


def verify_inclusion(
    index: int, size: int, leaf: bytes, path: Sequence[bytes], expected_root: bytes
) -> bool:
    """Whether ``path`` proves leaf data ``leaf`` at ``index`` in the tree of ``size`` leaves
    whose head is ``expected_root`` (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    r = leaf_hash(leaf)
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected_root


def consistency_proof(old_size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """The proof that the tree of the first ``old_size`` leaves is a prefix of the tree of all
    ``leaves`` (RFC 9162 §2.1.4.1)."""
    if not 0 < old_size <= len(leaves):
        raise ValueError(
            f"a consistency proof needs 0 < old size <= new size (got {old_size}, {len(leaves)})"
        )
    return _subproof(old_size, [leaf_hash(leaf) for leaf in leaves], True)


def _subproof(m: int, hashes: list[bytes], whole: bool) -> list[bytes]:
    n = len(hashes)
    if m == n:
        return [] if whole else [_root_of(hashes)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, hashes[:k], whole), _root_of(hashes[k:])]
    return [*_subproof(m - k, hashes[k:], False), _root_of(hashes[:k])]


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Whether ``proof`` shows the tree (``old_size``, ``old_root``) is a prefix of the tree
    (``new_size``, ``new_root``) (RFC 9162 §2.1.4.2)."""
    if not 0 < old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is the first node
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


# -- the compact frontier ----------------------------------------------------------------------


class FrontierError(ValueError):
    """A frontier's stored text that does not parse or does not add up: says what is wrong."""


@dataclass(eq=True)
class Frontier:
    """The tree over the leaves of rows ``base + 1 .. base + size``, kept as its frontier.

    ``nodes`` are the roots of the perfect subtrees of ``size``'s binary decomposition, left
    (largest) to right: one per set bit of ``size``. Appending a leaf merges the trailing
    subtrees of equal height, exactly like adding one to a binary counter.
    """

    base: int = 0
    size: int = 0
    nodes: list[bytes] = field(default_factory=list)

    @property
    def head_id(self) -> int:
        """The id of the last row in the tree (``base`` when it is empty)."""
        return self.base + self.size

    def copy(self) -> Frontier:
        return Frontier(self.base, self.size, list(self.nodes))

    def append(self, data: bytes) -> None:
        """Add the leaf whose data is ``data`` (a row's content digest)."""
        node = leaf_hash(data)
        n = self.size
        nodes = self.nodes
        while n & 1:  # each trailing one bit is a subtree of the new one's height: merge it
            node = node_hash(nodes.pop(), node)
            n >>= 1
        nodes.append(node)
        self.size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        # append() inlined: every row a checkpoint covers goes through here. The size moves with
        # each leaf, so a stream that fails part way leaves a frontier of the leaves so far.
        nodes = self.nodes
        n = self.size
        sha = hashlib.sha256
        for data in leaves:
            node = sha(b"\x00" + data).digest()
            m = n
            while m & 1:
                node = sha(b"\x01" + nodes.pop() + node).digest()
                m >>= 1
            nodes.append(node)
            n += 1
            self.size = n

    def root(self) -> bytes:
        """The tree head over every leaf so far (RFC 6962's MTH)."""
        if not self.nodes:
            return EMPTY_ROOT
        # The RFC splits at the largest power of two: the left subtree is the first node, the
        # right one the tree of the rest — so fold from the right.
        result = self.nodes[-1]
        for node in reversed(self.nodes[:-1]):
            result = node_hash(node, result)
        return result

    def to_text(self) -> str:
        """The stored form: ``{"base": b, "size": n, "nodes": [hex, ...]}``."""
        nodes = [node.hex() for node in self.nodes]
        return json.dumps({"base": self.base, "size": self.size, "nodes": nodes})

    @classmethod
    def from_text(cls, text: str) -> Frontier:
        """The frontier a stored text holds; :class:`FrontierError` says what is wrong."""
        try:
            value = json.loads(text)
        except (TypeError, ValueError):
            raise FrontierError("a Merkle frontier must be a JSON object") from None
        if not isinstance(value, dict) or set(value) != {"base", "size", "nodes"}:
            raise FrontierError("a Merkle frontier has exactly the keys base, size and nodes")
        base, size, nodes = value["base"], value["size"], value["nodes"]
        for name, number in (("base", base), ("size", size)):
            if type(number) is not int or number < 0:
                raise FrontierError(f"a Merkle frontier's {name} must be an integer >= 0")
        if not isinstance(nodes, list) or len(nodes) != size.bit_count():
            raise FrontierError(
                f"a Merkle frontier of size {size} has {size.bit_count()} nodes"
                f" (got {len(nodes) if isinstance(nodes, list) else 'none'})"
            )
        if not all(isinstance(node, str) and _HEX64.fullmatch(node) for node in nodes):
            raise FrontierError("a Merkle frontier's nodes are 64 hex characters each")
        return cls(base, size, [bytes.fromhex(node) for node in nodes])


def root_after(frontier: Frontier, later_leaves: Iterable[bytes]) -> bytes:
    """The tree head once ``later_leaves`` follow ``frontier`` (which is left unchanged)."""
    grown = frontier.copy()
    grown.extend(later_leaves)
    return grown.root()


def inclusion_proof_after(
    frontier: Frontier, later_leaves: Sequence[bytes], index: int, size: int
) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``size`` leaves, from ``frontier`` and
    the leaf data after it (``later_leaves[0]`` is leaf ``frontier.size``).

    Only a leaf at or after the frontier has a path here: every left sibling inside the
    frontier's range is then one of its nodes, or built from one and later leaves.
    """
    start = frontier.size
    if not start <= index < size <= start + len(later_leaves):
        raise ValueError(
            f"leaf index {index} in a tree of {size} leaves is not provable from a frontier"
            f" of {start} leaves and {len(later_leaves)} leaves after it"
        )
    hashes = [leaf_hash(leaf) for leaf in later_leaves[: size - start]]
    known: dict[tuple[int, int], bytes] = {}
    low = 0
    for node in frontier.nodes:  # each node's range: its height is the next set bit of size
        width = 1 << ((start - low).bit_length() - 1)
        known[(low, low + width)] = node
        low += width

    def subtree(a: int, b: int) -> bytes:
        if a >= start:
            return _root_of(hashes[a - start : b - start])
        if (a, b) in known:
            return known[(a, b)]
        if b - a == 1:  # unreachable for index >= start; a guard against a misuse
            raise ValueError(f"leaf {a} is inside the frontier: its hash is not kept")
        k = _split(b - a)
        return node_hash(subtree(a, a + k), subtree(a + k, b))

    def path(m: int, a: int, b: int) -> list[bytes]:
        if b - a == 1:
            return []
        k = _split(b - a)
        if m < a + k:
            return [*path(m, a, a + k), subtree(a + k, b)]
        return [*path(m, a + k, b), subtree(a, a + k)]

    return path(index, 0, size)
