"""Read the sessions of a run from any supported input format (data.format in the train config)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from train.adapters import (UnlabelledSessionsError, labelled_lines_from_csv, labelled_lines_from_log,
                            sessions_from_keyed_log, windows_from_labelled_lines)
from train.config import DataSection
from train.data import Session, SkipReport, load_sessions

logger = logging.getLogger(__name__)

LINE_LABELLED = ("labelled_csv", "labelled_log")  # formats whose sessions are windows cut from a line stream


def load_source(paths: Sequence[str], data: DataSection, max_window: int, role: str = "train",
                require_labels: bool = True) -> tuple[list[Session], SkipReport]:
    """Sessions from `paths` in data.format; line-labelled formats are cut into windows of data.window lines
    (default max_window) every data.window_hop lines (default: the window, i.e. no overlap). `role` is "train" or
    "eval": keyed logs of the eval files are labelled by data.eval_labels_csv when set. Without require_labels
    (the unsupervised objective) JSONL records without a label and keyed-log sessions without one (or without
    data.labels_csv) are read as unlabelled sessions."""
    if not paths:
        raise ValueError("no data files given (data.train is empty; pass --data FILE)")
    if data.format == "jsonl":
        return load_sessions(paths, skip_invalid=data.skip_invalid, require_labels=require_labels)
    report = SkipReport()
    if data.format == "keyed_log":
        if require_labels:
            data.require_labels_csv()
        sessions = _keyed_sessions(paths, data, role, report, require_labels)
    else:
        window, hop = _window_and_hop(data, max_window)
        sessions = []
        for path in paths:
            lines = _labelled_lines(path, data, report)
            sessions.extend(windows_from_labelled_lines(lines, window, hop, name=Path(path).name))
    report.log(", ".join(paths))
    if not sessions:
        raise ValueError(f"no sessions in {', '.join(paths)} (format {data.format})")
    return sessions, report


def _keyed_sessions(paths: Sequence[str], data: DataSection, role: str, report: SkipReport,
                    require_labels: bool) -> list[Session]:
    """keyed_log sessions; when none of their keys is labelled, say which setting labels these files."""
    try:
        return sessions_from_keyed_log(paths, data.key_regex, data.label_files(role), report, require_labels)
    except UnlabelledSessionsError as err:
        if role == "eval" and not data.eval_labels_csv:
            hint = ("the eval files take data.labels_csv unless data.eval_labels_csv is set: pass their labels "
                    "with data.eval_labels_csv=FILE, or list both files in data.labels_csv=[A, B]")
        else:
            setting = "data.eval_labels_csv" if role == "eval" else "data.labels_csv"
            hint = f"check {setting} and data.key_regex ({data.key_regex!r})"
        raise UnlabelledSessionsError(f"{err}; {hint}") from None


def split_labelled_by_time(paths: Sequence[str], data: DataSection,
                           max_window: int) -> tuple[list[Session], list[Session], SkipReport]:
    """(train, eval, report) of line-labelled logs without an eval file, split by time: the last
    data.eval_fraction of each file's lines is eval, cut into windows apart from the lines before it, so no window
    holds lines of both sides. A random split of the windows would not do: with window_hop < window neighbouring
    windows share most of their lines, and eval would hold near-copies of train windows (seen: 12 of 13 eval
    windows shared 12 of their 16 lines with a train window), inflating eval metrics and the calibrated threshold.
    Like the worker's future input, later windows may repeat earlier ones: they stay in eval."""
    if not paths:
        raise ValueError("no data files given (data.train is empty; pass --data FILE)")
    window, hop = _window_and_hop(data, max_window)
    report = SkipReport()
    train: list[Session] = []
    held_out: list[Session] = []
    for path in paths:
        lines = _labelled_lines(path, data, report)
        cut = len(lines) - round(data.eval_fraction * len(lines))
        name = Path(path).name
        before = windows_from_labelled_lines(lines[:cut], window, hop, name=name)
        train.extend(before)
        held_out.extend(windows_from_labelled_lines(lines[cut:], window, hop, name=name, first_index=len(before)))
    report.log(", ".join(paths))
    if not train or not held_out:
        raise ValueError(f"cannot split {', '.join(paths)} by time into train and eval windows ({len(train)} and "
                         f"{len(held_out)}); give an eval file (--eval-data) or more lines")
    logger.info("split by time: the last %.0f%% of each file's lines are eval; %d train windows, %d eval windows",
                100 * data.eval_fraction, len(train), len(held_out))
    return train, held_out, report


def _window_and_hop(data: DataSection, max_window: int) -> tuple[int, int]:
    window = data.window or max_window
    if window > max_window:
        raise ValueError(f"data.window must be <= model.max_window ({window} > {max_window})")
    hop = data.window_hop or window
    if hop > window:
        raise ValueError(f"data.window_hop must be <= data.window ({hop} > {window}): the lines between two "
                         f"windows would never be in one")
    return window, hop


def _labelled_lines(path: str, data: DataSection, report: SkipReport) -> list[tuple[str, int]]:
    if data.format == "labelled_csv":
        return labelled_lines_from_csv(path, data.label_column, data.normal_labels, data.text_columns,
                                       data.skip_invalid, report)
    return labelled_lines_from_log(path, data.label_regex, data.normal_labels, report)
