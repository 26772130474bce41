"""The unsupervised objective: learn what normal windows look like by telling them from perturbed copies.

Every training batch is half real windows (label 0) and half perturbed copies of real windows (label 1): lines
shuffled, a block of lines moved, lines dropped or duplicated, lines replaced by other training lines, or by
statements never seen in training, a run of lines overwritten by one training line (a burst), or every occurrence of
one line swapped for another. The model's 2-class head then gives P(perturbed), which LogScorer, `evaluate` and the
worker read as the anomaly score, unchanged. Perturbations act on index windows (rows of the run's embedding table);
the never-seen statements are extra rows appended to that table.

Contamination: unlabelled data holds a few percent of anomalies, which the real half would teach as normal. The
`trim_fraction` of the real windows is left out (their draws in the batches go to other real windows): with
trim_by=model, from epoch `trim_after_epochs` on, those the current model scores most perturbed; with trim_by=rarity,
once before training, those whose rarest line is in the fewest windows. A failure's lines tend to sit in a few
windows only, so the rarity trim leaves them out of the real half altogether and they can only read as perturbed.

Shapes: W windows, L the longest, B a batch, T its longest window, D the embedding width.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from train.config import UnsupervisedSection
from train.embeddings import WindowSet, gather_windows

logger = logging.getLogger(__name__)

ATTEMPTS = 4  # perturbation kinds tried on one window before it stays real (e.g. shuffling identical lines)


class Perturber:
    """Perturbs index windows; every kind returns a changed window or None where it cannot change this one."""

    def __init__(self, kinds: Sequence[str], vocab: torch.Tensor, unseen: torch.Tensor, max_window: int,
                 max_changed: float) -> None:
        self.kinds = list(kinds)
        self.vocab = vocab  # (V,) rows of the distinct training lines
        self.unseen = unseen  # (Z,) rows of never-seen statements
        self.max_window = max_window
        self.max_changed = max_changed

    def perturb(self, window: list[int], g: torch.Generator) -> tuple[list[int], str | None]:
        """A perturbed copy of `window` and its kind; (window, None) when no kind tried changed it."""
        for _ in range(ATTEMPTS):
            kind = self.kinds[_randint(len(self.kinds), g)]
            changed = getattr(self, f"_{kind}")(window, g)
            if changed is not None and changed != window:
                return changed, kind
        return window, None

    def _count(self, n: int, g: torch.Generator) -> int:
        """How many lines to change: 1 .. max(1, max_changed * n)."""
        return 1 + _randint(max(1, int(self.max_changed * n)), g)

    def _shuffle(self, w: list[int], g: torch.Generator) -> list[int] | None:
        return None if len(w) < 2 else [w[i] for i in torch.randperm(len(w), generator=g).tolist()]

    def _move(self, w: list[int], g: torch.Generator) -> list[int] | None:
        if len(w) < 2:
            return None
        size = 1 + _randint(len(w) - 1, g)
        start = _randint(len(w) - size + 1, g)
        block, rest = w[start:start + size], w[:start] + w[start + size:]
        at = _randint(len(rest) + 1, g)
        return rest[:at] + block + rest[at:]

    def _drop(self, w: list[int], g: torch.Generator) -> list[int] | None:
        if len(w) < 2:
            return None
        gone = set(torch.randperm(len(w), generator=g)[:min(self._count(len(w), g), len(w) - 1)].tolist())
        return [row for i, row in enumerate(w) if i not in gone]

    def _duplicate(self, w: list[int], g: torch.Generator) -> list[int] | None:
        out = list(w)
        for _ in range(self._count(len(w), g)):
            out.insert(_randint(len(out) + 1, g), w[_randint(len(w), g)])
        return out[:self.max_window]

    def _replace(self, w: list[int], g: torch.Generator) -> list[int] | None:
        return self._swap_in(w, self.vocab, g)

    def _unseen(self, w: list[int], g: torch.Generator) -> list[int] | None:
        return self._swap_in(w, self.unseen, g)

    def _burst(self, w: list[int], g: torch.Generator) -> list[int] | None:
        """A run of lines, up to the whole window, overwritten by one training line drawn uniformly over the
        distinct ones: a window that repeats a rare line reads as perturbed, a common line's bursts as real."""
        if len(self.vocab) == 0:
            return None
        row = int(self.vocab[_randint(len(self.vocab), g)])
        size = 1 + _randint(len(w), g)
        start = _randint(len(w) - size + 1, g)
        return w[:start] + [row] * size + w[start + size:]

    def _substitute(self, w: list[int], g: torch.Generator) -> list[int] | None:
        """Every occurrence of one of the window's lines swapped for one training line drawn uniformly over the
        distinct ones: what the window says changes, how many distinct lines it holds and where they sit do not."""
        if len(self.vocab) == 0:
            return None
        old = w[_randint(len(w), g)]
        new = int(self.vocab[_randint(len(self.vocab), g)])
        return [new if row == old else row for row in w]

    def _swap_in(self, w: list[int], pool: torch.Tensor, g: torch.Generator) -> list[int] | None:
        if len(pool) == 0:
            return None
        out = list(w)
        for i in torch.randperm(len(w), generator=g)[:self._count(len(w), g)].tolist():
            out[i] = int(pool[_randint(len(pool), g)])
        return out


def _randint(high: int, g: torch.Generator) -> int:
    """Uniform in [0, high)."""
    return int(torch.randint(high, (1,), generator=g))


def pack(windows: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Index windows as a (B, T) row tensor padded with row 0 and their (B,) lengths."""
    lengths = torch.tensor([len(w) for w in windows], dtype=torch.long)  # (B,)
    index = torch.zeros(len(windows), int(lengths.max()), dtype=torch.long)  # (B, T)
    for i, w in enumerate(windows):
        index[i, :len(w)] = torch.tensor(w, dtype=torch.long)
    return index, lengths


def window_rows(data: WindowSet, row: int) -> list[int]:
    return data.index[row, :int(data.lengths[row])].tolist()


@torch.no_grad()
def window_log_probs(model: torch.nn.Module, table: torch.Tensor, index: torch.Tensor, lengths: torch.Tensor,
                     batch_size: int, row_counts: torch.Tensor | None = None) -> torch.Tensor:
    """(W, 2) eval-mode log-probabilities (real, perturbed) of index windows (W, L) with lengths (W,); row_counts
    (U,): the line counts the model reads (model.rarity)."""
    model.eval()
    out = torch.zeros(len(lengths), 2)
    for start in range(0, len(lengths), batch_size):
        embeds, mask, counts = gather_windows(table, index[start:start + batch_size],
                                              lengths[start:start + batch_size], row_counts)
        logits = model(inputs_embeds=embeds, attention_mask=mask, line_counts=counts).logits  # (B, 2)
        out[start:start + batch_size] = logits.float().log_softmax(dim=-1).cpu()
    return out


def trim_mask(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """(W,) bool, False for the int(fraction * W) highest scores (the windows left out), True for the rest."""
    kept = torch.ones(len(scores), dtype=torch.bool)
    count = int(fraction * len(scores))
    if count:
        kept[torch.topk(scores, count).indices] = False
    return kept


def rarity_trim_mask(index: torch.Tensor, lengths: torch.Tensor, fraction: float) -> torch.Tensor:
    """(W,) bool, False for the int(fraction * W) windows whose rarest line occurs in the fewest windows (ties: the
    lower mean log window count of their distinct lines first), True for the rest. index (W, L), lengths (W,)."""
    W = len(lengths)
    kept = torch.ones(W, dtype=torch.bool)
    count = int(fraction * W)
    if count == 0:
        return kept
    real = torch.arange(index.shape[1])[None, :] < lengths[:, None]  # (W, L)
    rows = int(index.max()) + 1
    owner = torch.arange(W)[:, None].expand_as(index)[real]  # (N,) the window of each real line
    pairs = torch.unique(owner * rows + index[real])  # (P,) each (window, distinct line) once
    pair_window, pair_row = pairs // rows, pairs % rows  # (P,), (P,)
    windows_with = torch.bincount(pair_row, minlength=rows).double()  # (rows,) windows holding each line
    rarest = torch.full((W,), float("inf"), dtype=torch.double).scatter_reduce(
        0, pair_window, windows_with[pair_row], reduce="amin")  # (W,)
    distinct = torch.bincount(pair_window, minlength=W).double()  # (W,)
    mean_log = torch.zeros(W, dtype=torch.double).index_add_(0, pair_window, windows_with[pair_row].log()) / distinct
    order = torch.sort(mean_log, stable=True).indices  # (W,) then a stable sort by the rarest line
    order = order[torch.sort(rarest[order], stable=True).indices]
    kept[order[:count]] = False
    return kept


def kept_session_counts(train_set: WindowSet, kept: torch.Tensor, rows: Sequence[str]) -> dict[str, int]:
    """Masked line -> how many sessions hold it in a kept (untrimmed) window; `rows` names the table rows. A line
    only trimmed windows hold (a failure's, in unlabelled data) is then counted as never seen, at training and
    at scoring time alike. kept (W,) bool."""
    U = len(rows)
    real = (torch.arange(train_set.index.shape[1])[None, :] < train_set.lengths[:, None]) & kept[:, None]  # (W, L)
    owner = train_set.session_index[:, None].expand_as(train_set.index)[real]  # (N,) each real line's session
    pairs = torch.unique(owner * U + train_set.index[real])  # (P,) each (session, line) once
    per_row = torch.bincount(pairs % U, minlength=U)  # (U,)
    return {rows[row]: count for row, count in enumerate(per_row.tolist()) if count}


def unseen_statements(lines: Sequence[str], count: int, seed: int) -> list[str]:
    """Up to `count` statements that occur nowhere in `lines`, made of their words: the head of one line spliced to
    the tail of another, or one word of a line swapped for a word of another. They read like the system's own
    lines, so the model learns that a statement it never saw is a sign of anomaly, not that foreign text is."""
    known = set(lines)
    split = [line.split() for line in dict.fromkeys(lines) if line.split()]
    words = sorted({word for tokens in split for word in tokens})
    if not split or len(words) < 2:
        return []
    rng = random.Random(seed)
    made: dict[str, None] = {}
    for _ in range(20 * count):
        if len(made) >= count:
            break
        a, b = rng.choice(split), rng.choice(split)
        if rng.random() < 0.5 and len(a) > 1 and len(b) > 1:
            tokens = a[:rng.randrange(1, len(a))] + b[rng.randrange(1, len(b)):]
        else:
            tokens = list(a)
            tokens[rng.randrange(len(a))] = rng.choice(words)
        text = " ".join(tokens)
        if text not in known:
            made[text] = None
    return list(made)


def foreign_statements(paths: Sequence[str], known: set[str], mask: Any) -> list[str]:
    """The distinct masked lines of other systems' raw logs that training never saw."""
    found: dict[str, None] = {}
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"unsupervised.foreign_lines: {path} is not a file")
        with Path(path).open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.strip():
                    found.setdefault(mask(line.rstrip("\r\n")), None)
    return [line for line in found if line not in known]


@dataclass
class TrimRecord:
    """One epoch's trimming: how many real windows were left out and, where the data happened to carry labels
    (used for this report only, never for training), how many of those were labelled anomalous."""

    epoch: int
    trimmed: int
    windows: int
    trimmed_anomalous: int | None = None
    anomalous: int | None = None


@dataclass
class PerturbationObjective:
    """The batch source of the unsupervised objective (train.loop.BatchSource) and its label-free eval loss."""

    train_set: WindowSet  # real windows; their labels are never read
    table: torch.Tensor  # (U + Z, D) the run's lines, then the never-seen statements
    perturber: Perturber
    cfg: UnsupervisedSection
    seed: int
    eval_batch_size: int
    stage1_epochs: int  # to count the epochs before one (Epoch.global_index does not)
    known_labels: torch.Tensor | None = None  # (W,) 1/0 labels the data carried, for the trimming report only
    kept: torch.Tensor = field(init=False)  # (W,) bool: windows not trimmed
    trims: list[TrimRecord] = field(default_factory=list)
    _eval_pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        self.kept = torch.ones(len(self.train_set), dtype=torch.bool)
        if self.cfg.trim_by == "rarity" and self.cfg.trim_fraction > 0:
            self.kept = rarity_trim_mask(self.train_set.index, self.train_set.lengths, self.cfg.trim_fraction)
            self._record_trim(0)

    def _record_trim(self, epoch: int) -> None:
        record = TrimRecord(epoch, int((~self.kept).sum()), len(self.kept))
        if self.known_labels is not None:
            record.trimmed_anomalous = int(self.known_labels[~self.kept].sum())
            record.anomalous = int(self.known_labels.sum())
        self.trims.append(record)
        logger.info("%s: trimmed %d of %d real windows%s", f"epoch {epoch}" if epoch else "by rarity, before training",
                    record.trimmed, record.windows, "" if record.anomalous is None else
                    f" ({record.trimmed_anomalous} of the {record.anomalous} labelled anomalous; labels unused)")

    def start_epoch(self, model: torch.nn.Module, epoch: Any) -> None:
        """Trim the real windows the current model finds most anomalous (from epoch trim_after_epochs on). Depends
        on the weights only, so a resumed run trims as the uninterrupted one did."""
        done = epoch.index_in_stage + (self.stage1_epochs if epoch.stage == 2 else 0)  # epochs trained before
        if self.cfg.trim_by != "model" or self.cfg.trim_fraction == 0 or done < self.cfg.trim_after_epochs:
            return
        log_probs = window_log_probs(model, self.table, self.train_set.index, self.train_set.lengths,
                                     self.eval_batch_size, self._counts(self.train_set))  # (W, 2)
        self.kept = trim_mask(log_probs[:, 1], self.cfg.trim_fraction)
        self._record_trim(done + 1)

    def batch(self, rows: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                                            torch.Tensor]:
        """Windows `rows` (B,), half of them perturbed -> embeddings (B, T, D), mask (B, T), line counts (B, T) or
        None, labels (B,) 1 = perturbed. Trimmed rows are swapped for random kept ones. Depends only on (seed,
        step, rows, kept)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        rows = rows.clone()
        trimmed = (~self.kept[rows]).nonzero().flatten()
        if len(trimmed):
            kept_rows = self.kept.nonzero().flatten()
            rows[trimmed] = kept_rows[torch.randint(len(kept_rows), (len(trimmed),), generator=g)]
        windows = [window_rows(self.train_set, row) for row in rows.tolist()]
        labels = torch.zeros(len(windows), dtype=torch.long)  # (B,)
        for i in torch.randperm(len(windows), generator=g)[:len(windows) // 2].tolist():
            windows[i], kind = self.perturber.perturb(windows[i], g)
            labels[i] = int(kind is not None)
        embeds, mask, counts = gather_windows(self.table, *pack(windows), self._counts(self.train_set))
        return embeds, mask, counts, labels.to(self.table.device)  # (B, T, D), (B, T), (B, T), (B,)

    def _counts(self, data: WindowSet) -> torch.Tensor | None:
        """data's row counts (U,) with 0 for the never-seen statements' rows -> (U + Z,); None without."""
        if data.row_counts is None:
            return None
        return torch.cat([data.row_counts, data.row_counts.new_zeros(self.table.shape[0] - len(data.row_counts))])

    def eval_loss(self, model: torch.nn.Module, eval_set: WindowSet) -> float:
        """Label-free model selection: the mean cross-entropy of the eval windows as real and of one fixed
        perturbed copy of each as perturbed (the two halves weighed equally)."""
        if self._eval_pairs is None:
            g = torch.Generator().manual_seed(self.seed + 7919)
            copies = [self.perturber.perturb(window_rows(eval_set, row), g)[0] for row in range(len(eval_set))]
            self._eval_pairs = (eval_set.index, eval_set.lengths, *pack(copies))
        real_index, real_lengths, copy_index, copy_lengths = self._eval_pairs
        counts = self._counts(eval_set)
        real = window_log_probs(model, self.table, real_index, real_lengths, self.eval_batch_size, counts)[:, 0]
        copies = window_log_probs(model, self.table, copy_index, copy_lengths, self.eval_batch_size, counts)[:, 1]
        return float(-(real.mean() + copies.mean()) / 2)

    def selection_key(self, result: Any, record: dict[str, Any]) -> list[float]:
        """What select_best maximises: minus the eval loss the pipeline's eval hook logged."""
        return [-float(record["eval_perturbation_loss"])]

    def report(self) -> dict[str, Any]:
        return {"trim_by": self.cfg.trim_by, "trims": [vars(t) for t in self.trims],
                "unseen_rows": len(self.perturber.unseen),
                "vocab_rows": len(self.perturber.vocab), "perturbations": list(self.perturber.kinds)}


def window_labels(train_set: WindowSet, session_labels: Sequence[int | None] | None) -> torch.Tensor | None:
    """(W,) each window's session label where every session carried one (for the trimming report), else None."""
    if session_labels is None or any(label is None for label in session_labels):
        return None
    return torch.tensor(session_labels, dtype=torch.long)[train_set.session_index]


def training_vocab(train_set: WindowSet) -> torch.Tensor:
    """(V,) the distinct table rows the training windows use."""
    real = torch.arange(train_set.index.shape[1])[None, :] < train_set.lengths[:, None]  # (W, L)
    return torch.unique(train_set.index[real])


def add_unseen_rows(table: torch.Tensor, statements: Sequence[str], encoder: Any,
                    cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The table with the statements' embeddings appended -> ((U + Z, D), the (Z,) new rows)."""
    from train.embeddings import embed_lines

    if not statements:
        return table, torch.zeros(0, dtype=torch.long)
    extra = embed_lines(list(statements), encoder, cache).to(table.dtype)  # (Z, D)
    rows = torch.arange(table.shape[0], table.shape[0] + len(statements))
    return torch.cat([table, extra]), rows


def build_objective(cfg: UnsupervisedSection, train_set: WindowSet, table: torch.Tensor, train_lines: Sequence[str],
                    encoder: Any, cache: Any, mask: Any, seed: int, max_window: int, eval_batch_size: int,
                    stage1_epochs: int, known_labels: torch.Tensor | None = None) -> PerturbationObjective:
    """The objective for a run: never-seen statements made from the training lines (and any foreign lines) are
    embedded and appended to `table` (the objective's table is the extended one)."""
    statements = unseen_statements(train_lines, cfg.unseen_lines, seed)
    foreign = foreign_statements(cfg.foreign_lines, set(train_lines) | set(statements), mask)
    logger.info("unsupervised objective: %d never-seen statements made, %d foreign; perturbations %s; trimming "
                "%.0f%%", len(statements), len(foreign), cfg.perturbations, 100 * cfg.trim_fraction)
    statements += foreign
    table, unseen = add_unseen_rows(table, statements, encoder, cache)
    perturber = Perturber(cfg.perturbations, training_vocab(train_set), unseen, max_window, cfg.max_changed)
    return PerturbationObjective(train_set, table, perturber, cfg, seed, eval_batch_size, stage1_epochs,
                                 known_labels)
