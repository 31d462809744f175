"""Duplicate covers: exact (same pixels) and near (the same cover resized or re-encoded).

Each decoded cover gets a SHA-256 of its pixels and a small signature: a 256-bit dHash (the signs
of horizontal brightness steps on a 17x16 grey thumbnail), a 16x16 grey thumbnail and a 4x4 colour
one. Two covers are near duplicates when

- their aspect ratios agree within 5 % (a resize keeps it),
- their dHashes differ in at most 24 of 256 bits (the perceptual hash that finds candidates),
- their grey thumbnails correlate at 0.996 or more (the same picture, not only a similar layout),
- and no cell of their colour thumbnails differs by more than 16 of 255 (a series cover in
  another colour is another cover).

A DCT pHash was tried first and dropped: on smooth covers (gradients, few details) most of its
coefficients are near zero, so their signs flip under a resize (52 of 256 bits measured).

The thresholds were set on 400 covers (the synthetic demo covers, whose designs differ only by
genre; smooth random ones; drawn ones like the benchmark's) and 8 copies of each of 90 of them,
resized by 0.66x to 2x and re-encoded at JPEG quality 50 to 90: all 720 copies were found (dHash
distance at most 20, correlation at least 0.997), and of 79,800 pairs of distinct covers one was
joined, two covers with the same title and layout that differ only in the author's name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy
from PIL import Image

DHASH_MAX = 24  # of 256 bits
MIN_CORRELATION = 0.996  # of the mean-free 16x16 grey thumbnails
COLOUR_MAX = 16  # largest difference of a 4x4 colour thumbnail's cells, of 255
ASPECT_TOLERANCE = 0.05  # relative difference of width / height
_SMALL_SIDE = 64  # every thumbnail is taken from one 64x64 reduction of the cover
_DHASH_SIDE = 16
_THUMB_SIDE = 16
_COLOUR_SIDE = 4
_ROWS_PER_PASS = 256  # rows of the pairwise distance matrix computed at once (memory: rows x n x 2 bytes x 4)


@dataclass(frozen=True)
class Fingerprint:
    """What duplicate detection needs of one cover: pixel digest, signature, size."""

    sha256: str
    dhash: str  # 64 hex digits
    thumbnail: str  # 16x16 grey, 512 hex digits
    colour: str  # 4x4 RGB, 96 hex digits
    width: int
    height: int


@dataclass(frozen=True)
class Match:
    """How close a dropped cover is to the one kept: dHash distance and thumbnail correlation."""

    dhash_distance: int
    correlation: float


@dataclass(frozen=True)
class Group:
    """Covers found to be one: ``kept`` (the largest, then the smallest key) and the others."""

    kind: str  # "exact" when every member has the same pixels, else "near"
    kept: int  # index into the fingerprints given to find_groups
    dropped: tuple[int, ...]
    matches: tuple[Match, ...]  # of each dropped one to the kept one


def _thumbnail(image: Image.Image, size: tuple[int, int]) -> numpy.ndarray:
    return numpy.asarray(image.resize(size, Image.Resampling.BOX), dtype=numpy.uint8)


def fingerprint(rgb: Image.Image) -> Fingerprint:
    """The fingerprint of a decoded 8-bit RGB image."""
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    small = rgb.resize((_SMALL_SIDE, _SMALL_SIDE), Image.Resampling.BOX)  # one pass over the full image
    gray = small.convert("L")
    steps = _thumbnail(gray, (_DHASH_SIDE + 1, _DHASH_SIDE)).astype(numpy.int16)
    dhash = numpy.packbits(steps[:, 1:] > steps[:, :-1]).tobytes().hex()
    thumbnail = _thumbnail(gray, (_THUMB_SIDE, _THUMB_SIDE)).tobytes().hex()
    colour = _thumbnail(small, (_COLOUR_SIDE, _COLOUR_SIDE)).tobytes().hex()
    return Fingerprint(digest.hexdigest(), dhash, thumbnail, colour, rgb.width, rgb.height)


def _pixels(hex_digits: str) -> numpy.ndarray:
    return numpy.frombuffer(bytes.fromhex(hex_digits), dtype=numpy.uint8).astype(numpy.float64)


def correlation(a: Fingerprint, b: Fingerprint) -> float:
    """Correlation of two grey thumbnails; two flat ones (blank covers) count as alike if equally bright."""
    x, y = _pixels(a.thumbnail), _pixels(b.thumbnail)
    x_mean, y_mean = x.mean(), y.mean()
    x, y = x - x_mean, y - y_mean
    norms = float(numpy.linalg.norm(x) * numpy.linalg.norm(y))
    if norms < 1e-6:
        return 1.0 if abs(x_mean - y_mean) <= COLOUR_MAX and max(x.std(), y.std()) < 1 else 0.0
    return float(x @ y) / norms


def dhash_distance(a: Fingerprint, b: Fingerprint) -> int:
    return (int(a.dhash, 16) ^ int(b.dhash, 16)).bit_count()


def match(a: Fingerprint, b: Fingerprint) -> Match:
    return Match(dhash_distance(a, b), round(correlation(a, b), 4))


def is_near(a: Fingerprint, b: Fingerprint) -> bool:
    """Whether two covers are one, resized or re-encoded (the tests of the module docstring)."""
    ratio = (a.width / a.height) / (b.width / b.height)
    if not 1 / (1 + ASPECT_TOLERANCE) <= ratio <= 1 + ASPECT_TOLERANCE:
        return False
    if numpy.abs(_pixels(a.colour) - _pixels(b.colour)).max() > COLOUR_MAX:
        return False
    return dhash_distance(a, b) <= DHASH_MAX and correlation(a, b) >= MIN_CORRELATION


def _words(hashes: Sequence[str]) -> numpy.ndarray:
    """Hex hashes as an (n, 4) array of uint64 words."""
    raw = b"".join(bytes.fromhex(h) for h in hashes)
    return numpy.frombuffer(raw, dtype=">u8").astype(numpy.uint64).reshape(len(hashes), -1)


def _hamming(rows: numpy.ndarray, columns: numpy.ndarray) -> numpy.ndarray:
    """Pairwise Hamming distances between two sets of hashes given as uint64 words."""
    total = numpy.zeros((rows.shape[0], columns.shape[0]), dtype=numpy.uint16)
    for word in range(rows.shape[1]):
        total += numpy.bitwise_count(rows[:, None, word] ^ columns[None, :, word])
    return total


def near_pairs(prints: Sequence[Fingerprint]) -> list[tuple[int, int]]:
    """Every pair ``(i, j)``, i < j, of near-duplicate covers.

    dHashes are compared pairwise with numpy, in passes of rows against the covers of about the
    same aspect ratio (sorted by it): O(n^2) word operations, about half a second for 12,000
    covers; the candidates within ``DHASH_MAX`` are then checked with :func:`is_near`.
    """
    if len(prints) < 2:
        return []
    aspects = numpy.array([p.width / p.height for p in prints])
    order = numpy.argsort(aspects, kind="stable")
    sorted_aspects = aspects[order]
    hashes = _words([prints[i].dhash for i in order])
    found = []
    for start in range(0, len(prints), _ROWS_PER_PASS):
        stop = min(start + _ROWS_PER_PASS, len(prints))
        end = int(numpy.searchsorted(sorted_aspects, sorted_aspects[stop - 1] * (1 + ASPECT_TOLERANCE), "right"))
        rows, columns = numpy.nonzero(_hamming(hashes[start:stop], hashes[start:end]) <= DHASH_MAX)
        for row, column in zip(rows.tolist(), columns.tolist(), strict=True):
            if column > row:  # each unordered pair once, never a cover with itself
                i, j = sorted((int(order[start + row]), int(order[start + column])))
                if is_near(prints[i], prints[j]):
                    found.append((i, j))
    return sorted(found)


def _components(count: int, edges: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Connected components (union-find) with more than one member, each sorted."""
    parent = list(range(count))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for a, b in edges:
        parent[root(a)] = root(b)
    members: dict[int, list[int]] = {}
    for node in range(count):
        members.setdefault(root(node), []).append(node)
    return sorted(group for group in members.values() if len(group) > 1)


def find_groups(prints: Sequence[Fingerprint], keys: Sequence[str]) -> list[Group]:
    """Groups of duplicate covers; in each the largest image is kept (ties: the smallest key).

    Exact duplicates share a pixel digest; near ones are joined by :func:`near_pairs`. A chain of
    near duplicates (a~b, b~c) forms one group even when its ends are further apart.
    """
    by_digest: dict[str, int] = {}
    edges: list[tuple[int, int]] = []
    for index, item in enumerate(prints):
        first = by_digest.setdefault(item.sha256, index)
        if first != index:
            edges.append((first, index))
    edges += near_pairs(prints)
    groups = []
    for members in _components(len(prints), edges):
        kept = min(members, key=lambda m: (-prints[m].width * prints[m].height, keys[m]))
        dropped = tuple(sorted((m for m in members if m != kept), key=lambda m: keys[m]))
        exact = len({prints[m].sha256 for m in members}) == 1
        matches = tuple(match(prints[m], prints[kept]) for m in dropped)
        groups.append(Group("exact" if exact else "near", kept, dropped, matches))
    return sorted(groups, key=lambda g: keys[g.kept])
