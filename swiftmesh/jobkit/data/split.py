"""Holding out an evaluation split (``split_dataset_ratio``, as ms-swift and the HF trainers name it)."""

from __future__ import annotations

import random


def split(rows: list, ratio: float, seed: int) -> tuple[list, list]:
    """``(train, eval)``: hold out ``round(ratio * len(rows))`` rows (at least one when
    ``ratio`` > 0, never all) picked by a ``seed``-ed shuffle; both keep the rows' order.

    ``ratio`` <= 0 or fewer than two rows: ``(rows, [])``.
    """
    if ratio <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(rows) - 1, max(1, round(ratio * len(rows))))
    ev = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in ev], [r for i, r in enumerate(rows) if i in ev]
