"""The stratified, seeded train/val/test split of prepared rows.

Rows of each class are ranked by a seeded hash of their path; the split sizes follow from
the class counts alone (every non-empty split keeps at least one image of a class of 3 or
more), and ``--imbalance`` thins the training rows of the first half of the classes. The
driver turns the ranks into hash values where each split starts (:func:`split_starts`), so a
task places each row by its own hash (:func:`split_of`): no shuffle, no join.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np


def split_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Sizes of train/val/test for a class of ``n`` images.

    Every split with a non-zero fraction gets at least one image when ``n >= 3``.
    """
    _, fv, ft = fractions
    val = round(n * fv)
    test = round(n * ft)
    if n >= 3:
        val = max(val, 1 if fv > 0 else 0)
        test = max(test, 1 if ft > 0 else 0)
    while val + test > n - 1 and (val > 0 or test > 0) and n >= 1:
        if val >= test and val > 0:
            val -= 1
        else:
            test -= 1
    return n - val - test, val, test


def minority_classes(num_classes: int) -> list[int]:
    """The classes ``--imbalance`` thins out: the first half (by class index)."""
    return list(range(num_classes // 2))


def split_bounds(class_counts: dict[int, int], fractions: tuple[float, float, float],
                 imbalance: float | None = None) -> dict[int, tuple[int, int, int]]:
    """Per class, the ranks where ``dropped``, ``val`` and ``test`` start (rows ranked by
    the seeded hash): train is ``[0, a)``, dropped ``[a, b)``, val ``[b, c)``, test the
    rest."""
    thinned = set(minority_classes(len(class_counts))) if imbalance else set()
    bounds = {}
    for label, n in class_counts.items():
        tr, va, _ = split_counts(n, fractions)
        keep = max(1, math.ceil(tr / imbalance)) if label in thinned and imbalance else tr
        bounds[label] = (keep, tr, tr + va)
    return bounds


def path_hash(key: str, seed: int) -> int:
    """The seeded 64-bit hash that orders the rows of a class (``key``: the file's path
    under the source folder, or a built-in data set's row name). Computed the same way on
    the driver (to find where splits start) and in the tasks (to place each row)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8,
                             key=seed.to_bytes(8, "little", signed=True))
    return int.from_bytes(digest.digest(), "little")


#: Where a class's splits start, as hash values: a row with hash < ``dropped`` is train,
#: < ``val`` dropped (``--imbalance``), < ``test`` val, else test.
Starts = tuple[int, int, int]
#: What :func:`split_of` returns for each interval, in order.
SPLIT_ORDER = ("train", "dropped", "val", "test")
_NEVER = 2**64  # greater than any hash: the split starts after the last row


def split_starts(hashes: dict[int, np.ndarray], fractions: tuple[float, float, float],
                 imbalance: float | None = None) -> dict[int, Starts]:
    """Per class, the hash values where ``dropped``, ``val`` and ``test`` start, from the
    hashes of all its rows (uint64 arrays): the rows ranked by hash are split exactly as
    :func:`split_bounds` says. Two rows of a class with the same 64-bit hash (odds ~n²/2⁶⁵)
    fall in the same split."""
    counts = {label: len(h) for label, h in hashes.items()}
    starts: dict[int, Starts] = {}
    for label, bounds in split_bounds(counts, fractions, imbalance).items():
        values = hashes[label]
        ranks = sorted({b for b in bounds if b < len(values)})
        ordered = np.partition(values, ranks) if ranks else values
        starts[label] = tuple(  # type: ignore[assignment]
            int(ordered[b]) if b < len(values) else _NEVER for b in bounds)
    return starts


def split_of(row_hash: int, starts: Starts) -> str:
    """The split of a row of a class whose splits start at ``starts``."""
    for name, start in zip(SPLIT_ORDER, starts, strict=False):
        if row_hash < start:
            return name
    return SPLIT_ORDER[-1]
