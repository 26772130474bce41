"""Raw-log adapters: turn users' own logs into labelled sessions.

(a) session-keyed logs: a regex with one group pulls the session key out of each line (`blk_-?\\d+` for HDFS) and a
    CSV `session_id,label` labels the sessions;
(b) line-labelled logs in time order (BGL style: a structured CSV with a label column, or raw lines whose label a
    regex group captures) are cut into windows with `model.windowing.session_windows`, the rule the streaming
    worker uses, and a window is anomalous if any of its lines is.
Nothing is dropped silently: lines without a key, keys without a label and lines without a label are counted in
the SkipReport and logged.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model.windowing import session_windows
from train.data import InvalidRecord, Session, SkipReport, parse_label

logger = logging.getLogger(__name__)

# Columns of loghub's structured CSVs that come from a log parser, never from the log itself: a model must not
# read them (the event id would give the template away), so they are left out of the reconstructed line.
PARSER_COLUMNS = ("LineId", "EventId", "EventTemplate")


def compile_one_group(pattern: str, what: str) -> re.Pattern[str]:
    """Compile a regex that must have exactly one capturing group; ValueError naming the pattern otherwise."""
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"{what} is not a valid regex ({pattern!r}: {err})") from None
    if compiled.groups != 1:
        raise ValueError(f"{what} must have exactly one capturing group ({pattern!r} has {compiled.groups})")
    return compiled


class UnlabelledSessionsError(ValueError):
    """No session key of a keyed log has a label in the labels file(s): the message names how many keys, which
    files and one example key."""


def read_session_labels(paths: str | Path | Sequence[str | Path]) -> dict[str, int]:
    """CSV(s) with a header holding `session_id` and `label` columns; labels in any accepted spelling. Several
    files are read as one; a session labelled differently in two places is refused, naming both."""
    labels: dict[str, int] = {}
    where: dict[str, str] = {}
    for path in [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]:
        if not path.is_file():
            raise FileNotFoundError(f"labels file not found: {path}")
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"session_id", "label"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{path}:1: missing column(s) {', '.join(sorted(missing))} "
                                 f"(header: {','.join(reader.fieldnames or ())})")
            for row in reader:
                location = f"{path}:{reader.line_num}"
                try:
                    label = parse_label(row["label"])
                except ValueError as err:
                    raise ValueError(f"{location}: {err}") from None
                key = row["session_id"]
                if labels.get(key, label) != label:
                    raise ValueError(f"{location}: session {key!r} labelled {label} here and {labels[key]} at "
                                     f"{where[key]}")
                labels[key] = label
                where.setdefault(key, location)
    return labels


def sessions_from_keyed_log(log_paths: Sequence[str | Path], key_regex: str,
                            labels_csv: str | Path | Sequence[str | Path],
                            report: SkipReport | None = None, require_labels: bool = True) -> list[Session]:
    """Group raw lines by the session key the regex captures; label each session from the CSV(s). Sessions come
    out in order of their first line. Lines of unlabelled keys are counted and skipped; when no key has a label,
    UnlabelledSessionsError. Without require_labels (the unsupervised objective) unlabelled keys are kept as
    unlabelled sessions and labels_csv may be empty."""
    pattern = compile_one_group(key_regex, "key_regex")
    label_files = [labels_csv] if isinstance(labels_csv, (str, Path)) else list(labels_csv)
    label_names = ", ".join(str(p) for p in label_files)
    labels = read_session_labels(label_files) if label_files else {}
    report = report if report is not None else SkipReport()
    grouped: dict[str, list[str]] = {}
    unlabelled: dict[str, int] = {}  # key -> lines skipped, in order of first line
    for log_path in log_paths:
        for number, line in _read_lines(log_path):
            found = pattern.search(line)
            if found is None:
                report.add("line without a session key", f"{log_path}:{number}: no match for {key_regex!r}")
                continue
            key = found.group(1)
            if key not in labels and require_labels:
                unlabelled[key] = unlabelled.get(key, 0) + 1
                report.add("line of an unlabelled session",
                           f"{log_path}:{number}: session {key!r} not in {label_names}")
                continue
            grouped.setdefault(key, []).append(line)
    logs = ", ".join(str(p) for p in log_paths)
    if unlabelled:
        example = next(iter(unlabelled))
        summary = (f"{len(unlabelled):,} of the {len(unlabelled) + len(grouped):,} session keys in {logs} have no "
                   f"label in {label_names} (e.g. {example!r})")
        if not grouped:
            raise UnlabelledSessionsError(summary)
        logger.warning("%s; their %d lines were skipped", summary, sum(unlabelled.values()))
    return [Session(session_id=key, lines=tuple(lines), label=labels.get(key, 0), source=str(log_paths[0]),
                    labelled=key in labels)
            for key, lines in grouped.items()]


def labelled_lines_from_csv(path: str | Path, label_column: str = "Label", normal_labels: Sequence[str] = ("-",),
                            text_columns: Sequence[str] = (), skip_invalid: bool = False,
                            report: SkipReport | None = None) -> list[tuple[str, int]]:
    """(line, is_anomalous) from a structured CSV. The line is the text columns joined by spaces; by default every
    column except the label and the parser's columns (LineId, EventId, EventTemplate). A row with fewer or more
    fields than the header, or a blank label, is a ValueError naming FILE:LINE, or is counted in `report` with
    skip_invalid."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"log file not found: {path}")
    report = report if report is not None else SkipReport()
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or ())
        columns = list(text_columns) or [c for c in header if c != label_column and c not in PARSER_COLUMNS]
        missing = [c for c in [label_column, *columns] if c not in header]
        if missing:
            raise ValueError(f"{path}:1: missing column(s) {', '.join(missing)} (header: {','.join(header)})")
        normal = set(normal_labels)
        out: list[tuple[str, int]] = []
        for row in reader:
            try:
                _check_row(row, header, label_column, f"{path}:{reader.line_num}")
            except InvalidRecord as err:
                if not skip_invalid:
                    raise
                report.add(err.reason, str(err))
                continue
            out.append((" ".join(row[c] for c in columns), int(row[label_column] not in normal)))
        return out


def _check_row(row: dict[str | None, Any], header: list[str], label_column: str, location: str) -> None:
    """InvalidRecord unless the CSV row has exactly the header's fields and a label (csv.DictReader fills the
    fields a short row lacks with None and keeps a long row's extra fields under the key None)."""
    absent = [c for c in header if row.get(c) is None]
    if absent:
        raise InvalidRecord(location, "short row", f"{len(header) - len(absent)} of {len(header)} fields; no "
                                                   f"{', '.join(absent)}")
    if None in row:
        raise InvalidRecord(location, "long row", f"{len(header) + len(row[None])} fields, the header has "
                                                  f"{len(header)}")
    if not row[label_column].strip():
        raise InvalidRecord(location, "blank label", f"column {label_column} is empty")


def labelled_lines_from_log(path: str | Path, label_regex: str, normal_labels: Sequence[str] = ("-",),
                            report: SkipReport | None = None) -> list[tuple[str, int]]:
    """(line, is_anomalous) from raw lines whose label the regex's group captures; the matched span is cut out
    of the line (the label is not part of what the worker will see). Lines without a match are counted."""
    pattern = compile_one_group(label_regex, "label_regex")
    report = report if report is not None else SkipReport()
    normal = set(normal_labels)
    out: list[tuple[str, int]] = []
    for number, line in _read_lines(path):
        found = pattern.search(line)
        if found is None:
            report.add("line without a label", f"{path}:{number}: no match for {label_regex!r}")
            continue
        text = (line[: found.start()] + line[found.end():]).strip()
        out.append((text, int(found.group(1) not in normal)))
    return out


def windows_from_labelled_lines(lines: Sequence[tuple[str, int]], window: int, hop: int, name: str,
                                first_index: int = 0) -> list[Session]:
    """Cut a time-ordered line stream into windows with the worker's rule; a window is anomalous if any line is.
    Windows are named `name:w<index>`, counted from `first_index`."""
    sessions = []
    for index, chunk in enumerate(session_windows(list(lines), window, hop), start=first_index):
        sessions.append(Session(session_id=f"{name}:w{index}", lines=tuple(text for text, _ in chunk),
                                label=int(any(flag for _, flag in chunk)), source=name))
    return sessions


def _read_lines(path: str | Path) -> list[tuple[int, str]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"log file not found: {path}")
    with path.open(encoding="utf-8", errors="replace") as handle:
        return [(n, line.rstrip("\r\n")) for n, line in enumerate(handle, start=1) if line.strip()]
