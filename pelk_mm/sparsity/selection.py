"""Exact linear-time selection of the k smallest scores (ties to the lower
index), for mask updates and SNIP on tens of millions of weights."""
import math
from typing import Tuple

import torch
from torch import Tensor


def kth_smallest(scores: Tensor, k: int) -> Tuple[Tensor, int, int]:
    """The ``k``-th smallest of the 1-D ``scores`` (``1 <= k <= numel``) and
    how many scores are below it and equal to it.

    Exact, in a few linear passes: a strided sample of 2^14 scores brackets
    the value, and ``kthvalue`` runs over the scores inside the bracket only;
    over all of them when the bracket misses (or the tensor is small).
    """
    n = scores.numel()
    if n > 2**18:
        sample = scores[::n // 2**14].sort().values
        rank = k / n * sample.numel()
        margin = 4 * math.sqrt(sample.numel()) + 2
        lo = sample[max(int(rank - margin), 0)]
        hi = sample[min(int(rank + margin), sample.numel() - 1)]
        below = int(torch.count_nonzero(scores < lo))
        inside = scores[(scores >= lo) & (scores <= hi)]
        if below < k <= below + inside.numel():
            kth = inside.kthvalue(k - below).values
            return (kth, below + int(torch.count_nonzero(inside < kth)),
                    int(torch.count_nonzero(inside == kth)))
    kth = scores.kthvalue(k).values
    return (kth, int(torch.count_nonzero(scores < kth)),
            int(torch.count_nonzero(scores == kth)))


def bottom_k(scores: Tensor, k: int) -> Tensor:
    """Bool mask of the ``k`` smallest of the 1-D ``scores``; ties go to the
    lower indices.

    Linear time (:func:`kth_smallest`) instead of a sort: every score below
    the ``k``-th smallest is taken, then the first of the scores equal to it,
    in index order, until ``k`` are taken.
    """
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    kth, below, equal = kth_smallest(scores, k)
    if below + equal == k:
        return scores <= kth
    ties = scores == kth
    ties &= ties.cumsum(0) <= k - below
    return ties.logical_or_(scores < kth)
