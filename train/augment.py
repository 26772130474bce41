"""Shuffle the lines of anomalous training windows whose anomaly is in what they hold, not in their order.

An anomalous window whose lines, counted as a multiset, no normal training window holds is anomalous for what it
holds (a replica never received, an exception repeated): any order of the same lines is anomalous too. The model
reads order as well (positions, attention), and without a hint it may tie such a failure to the order it was seen
in. Synthetic HDFS shows it: train holds 1,746 anomalous blocks "receiving, receiving, allocateBlock", dev 151
"allocateBlock, receiving, receiving"; depending on the seed (and on the number of torch threads, which changes
the float rounding) the model scored those 151 at 0.0015 and the max-F1 cut fell to 0.0007, where 18 normal blocks
passed it (seed 42, 1 thread). Windows that share their multiset with a normal window keep their order: their
anomaly may be the order itself (synthetic HDFS's order anomalies are normal blocks rotated). On by default
(`training.shuffle_anomalous: 0.5`).

Each step, each such window of the batch is shuffled with probability `probability`; the draws depend only on
(seed, step, window), so a resumed run shuffles as an uninterrupted one, and data-parallel processes, each with
its share of the batch, shuffle each window as one process would. Shapes: W windows, L the longest, B a batch, T
its longest window, D the embedding width.
"""

from __future__ import annotations

from collections import Counter

import torch

from train.embeddings import WindowSet


def order_free_anomalies(data: WindowSet) -> torch.Tensor:
    """(W,) bool: the window is anomalous and no normal window holds the same lines with the same counts."""
    bags = [tuple(sorted(Counter(data.index[w, :n].tolist()).items())) for w, n in enumerate(data.lengths.tolist())]
    normal = {bag for bag, label in zip(bags, data.labels.tolist()) if label == 0}
    return torch.tensor([label == 1 and bag not in normal for bag, label in zip(bags, data.labels.tolist())],
                        dtype=torch.bool)


class AnomalyShuffle:
    """Shuffles, in a batch, the lines of the order-free anomalous windows (`order_free_anomalies`)."""

    def __init__(self, data: WindowSet, probability: float, seed: int) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"shuffle probability must be in [0, 1] ({probability})")
        self.eligible = order_free_anomalies(data)  # (W,)
        self.lengths = data.lengths  # (W,)
        self.probability = probability
        self.seed = seed

    def __call__(self, rows: torch.Tensor, embeds: torch.Tensor, counts: torch.Tensor | None,
                 step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Windows `rows` (B,) as embeddings (B, T, D) and line counts (B, T) or None, each chosen window's real
        lines in a random order (padding stays last); the tensors are changed in place and returned."""
        for b in torch.nonzero(self.eligible[rows]).flatten().tolist():
            window = int(rows[b])
            generator = torch.Generator().manual_seed(((self.seed * 1_000_003 + step) * 1_000_033 + window) % 2**63)
            if float(torch.rand(1, generator=generator)) >= self.probability:
                continue
            n = int(self.lengths[window])
            order = torch.randperm(n, generator=generator).to(embeds.device)  # (n,)
            embeds[b, :n] = embeds[b, order]
            if counts is not None:
                counts[b, :n] = counts[b, order]
        return embeds, counts
