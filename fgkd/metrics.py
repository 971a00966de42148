"""Top-k accuracy and the one rule that combines ensemble members' scores.

Numpy only (and fgkd.errors), so that ensembles, reports, part occlusion and training can all score
alike without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import FgkdError


def check_combine(combine: str) -> None:
    if combine not in COMBINES:
        raise FgkdError(f"combine: {combine!r} is not one of {', '.join(COMBINES)}")


def topk_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Whether each image's true class is among its k top-scored classes, ties resolved against the truth:
    a hit needs (classes scored above it) + (other classes scored equal to it) < k. Constant scores are
    never a top-1 hit, so a network (or bf16 rounding) that cannot tell classes apart earns nothing.

    One comparison per score: a tenth of the time of a partial sort, which counts for the 2^n subsets of
    an ensemble."""
    true = np.take_along_axis(scores, labels[:, None], axis=1)
    return ((scores >= true).sum(axis=1) <= k) & np.isfinite(true[:, 0])  # the true class is one of the >=; NaN never hits


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of images that are top-k hits (see topk_hits for ties)."""
    return float(topk_hits(scores, labels, k).mean())


def ensemble_scores(member_logits: Sequence[np.ndarray], combine: str,
                    subsets: Iterable[tuple[int, ...]]) -> Iterator[np.ndarray]:
    """Class scores of the ensemble of each subset of the members: the one place members are combined, as the sum
    of each member's ``COMBINES[combine].member_scores``. Each member is transformed once, however many subsets it
    is in."""
    check_combine(combine)
    scores = np.stack([COMBINES[combine].member_scores(logits) for logits in member_logits])
    for subset in subsets:
        yield scores[list(subset)].sum(axis=0)


def combine_scores(member_logits: Sequence[np.ndarray], combine: str) -> np.ndarray:
    """Class scores of the ensemble of all members (see ensemble_scores)."""
    return next(ensemble_scores(member_logits, combine, [tuple(range(len(member_logits)))]))


def combined_probabilities(member_logits: Sequence[np.ndarray], combine: str) -> np.ndarray:
    """Class probabilities of the ensemble of all members, ranked as combine_scores ranks them."""
    return COMBINES[combine].probabilities(combine_scores(member_logits, combine), len(member_logits))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64: in float32, exp underflows to exactly 0 below about -104 and would tie classes
    that are not tied."""
    shifted = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Combine:
    """One rule for combining ensemble members: the ensemble's class scores are the sum of ``member_scores`` over
    its members, and ``probabilities`` turns the scores of n members into class probabilities (fgkd classify)."""

    text: str  # how reports name it
    member_scores: Callable[[np.ndarray], np.ndarray]
    probabilities: Callable[[np.ndarray, int], np.ndarray]


# The combine rules by name: the CLI's --combine choices; the schema's ensemble.combine enum is tested against it.
COMBINES = {
    # The official code: the sum of logits; their softmax for probabilities.
    "logits": Combine("sum of logits", lambda logits: logits, lambda scores, members: softmax(scores)),
    # The sum of softmax probabilities ranks the classes like their mean (dividing by the member count per subset
    # could only add rounding ties); divided once for probabilities.
    "probs": Combine("mean of softmax probabilities", softmax, lambda scores, members: scores / members),
}
