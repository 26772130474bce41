"""Read the sessions of a run from any supported input format (data.format in the train config)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from train.adapters import (labelled_lines_from_csv, labelled_lines_from_log, sessions_from_keyed_log,
                            windows_from_labelled_lines)
from train.config import DataSection
from train.data import Session, SkipReport, load_sessions


def load_source(paths: Sequence[str], data: DataSection, max_window: int) -> tuple[list[Session], SkipReport]:
    """Sessions from `paths` in data.format; line-labelled formats are cut into windows of data.window lines
    (default max_window) every data.window_hop lines (default: the window, i.e. no overlap)."""
    if not paths:
        raise ValueError("no data files given (data.train is empty; pass --data FILE)")
    if data.format == "jsonl":
        return load_sessions(paths, skip_invalid=data.skip_invalid)
    report = SkipReport()
    if data.format == "keyed_log":
        sessions = sessions_from_keyed_log(paths, data.key_regex, str(data.labels_csv), report)
    else:
        window = data.window or max_window
        if window > max_window:
            raise ValueError(f"data.window must be <= model.max_window ({window} > {max_window})")
        hop = data.window_hop or window
        if hop > window:
            raise ValueError(f"data.window_hop must be <= data.window ({hop} > {window}): the lines between two "
                             f"windows would never be in one")
        sessions = []
        for path in paths:
            if data.format == "labelled_csv":
                lines = labelled_lines_from_csv(path, data.label_column, data.normal_labels, data.text_columns,
                                                data.skip_invalid, report)
            else:
                lines = labelled_lines_from_log(path, data.label_regex, data.normal_labels, report)
            sessions.extend(windows_from_labelled_lines(lines, window, hop, name=Path(path).name))
    report.log(", ".join(paths))
    if not sessions:
        raise ValueError(f"no sessions in {', '.join(paths)} (format {data.format})")
    return sessions, report
