"""Raw-log adapters: session-keyed logs + labels CSV, and line-labelled logs cut into the worker's windows."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from model.windowing import session_windows
from model.config_io import load_config
from train.adapters import (UnlabelledSessionsError, labelled_lines_from_csv, labelled_lines_from_log,
                            read_session_labels, sessions_from_keyed_log, windows_from_labelled_lines)
from train.config import DataSection, TrainConfig
from train.data import SkipReport
from train.pipeline import load_run_data
from train.sources import load_source

HDFS_LINES = [
    "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block blk_38865049064139660 "
    "terminating",
    "081109 203807 222 INFO dfs.DataNode$PacketResponder: PacketResponder 0 for block blk_-6952295868487656571 "
    "terminating",
    "081109 204005 35 INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap updated: 10.251.73.220:50010 "
    "is added to blk_7128370237687728475 size 67108864",
    "081109 204015 308 INFO dfs.DataNode$PacketResponder: Received block blk_38865049064139660 of size 3 from "
    "/10.0.0.1",
    "081109 204106 329 INFO dfs.DataNode$PacketResponder: a line without any block id",
]


def test_keyed_log_groups_lines_and_counts_what_it_skips(tmp_path: Path) -> None:
    log = tmp_path / "hdfs.log"
    log.write_text("\n".join(HDFS_LINES) + "\n", encoding="utf-8")
    labels = tmp_path / "labels.csv"
    labels.write_text("session_id,label\nblk_38865049064139660,0\nblk_-6952295868487656571,Anomaly\n"
                      .replace("Anomaly", "1"), encoding="utf-8")
    report = SkipReport()
    sessions = sessions_from_keyed_log([log], r"(blk_-?\d+)", labels, report)
    assert [(s.session_id, len(s.lines), s.label) for s in sessions] == [
        ("blk_38865049064139660", 2, 0), ("blk_-6952295868487656571", 1, 1)]
    assert sessions[0].lines == (HDFS_LINES[0], HDFS_LINES[3])
    assert dict(report.counts) == {"line of an unlabelled session": 1, "line without a session key": 1}


def test_key_regex_needs_exactly_one_group(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"exactly one capturing group \('blk_-\?\\\\d\+' has 0\)"):
        sessions_from_keyed_log([tmp_path / "x.log"], r"blk_-?\d+", tmp_path / "l.csv")


def test_labels_csv_errors_name_file_and_line(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("session_id,label\na,0\nb,maybe\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"labels.csv:3: unknown label \('maybe'\)"):
        read_session_labels(labels)
    labels.write_text("id,label\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing column"):
        read_session_labels(labels)


def keyed(**settings: object) -> DataSection:
    return DataSection(format="keyed_log", **settings)  # type: ignore[arg-type]


def labels_of(path: Path) -> dict[str, int]:
    rows = path.read_text(encoding="utf-8").splitlines()[1:]
    return {key: int(label) for key, label in (row.split(",") for row in rows)}


def test_per_split_label_files_label_each_split(keyed_split: Path) -> None:
    data = keyed(labels_csv=str(keyed_split / "train_labels.csv"),
                 eval_labels_csv=str(keyed_split / "dev_labels.csv"))
    train, _ = load_source([str(keyed_split / "train_stream.log")], data, 64, role="train")
    dev, report = load_source([str(keyed_split / "dev_stream.log")], data, 64, role="eval")
    assert {s.session_id: s.label for s in train} == labels_of(keyed_split / "train_labels.csv")
    assert {s.session_id: s.label for s in dev} == labels_of(keyed_split / "dev_labels.csv")
    assert report.total == 0 and all(len(s.lines) == 3 for s in dev)


def test_one_labels_file_for_both_splits_says_the_eval_keys_are_unlabelled(keyed_split: Path) -> None:
    """The issue's run: per-split files, only train_labels.csv given; it used to fail with `no sessions in
    dev_stream.log`."""
    labels = keyed_split / "train_labels.csv"
    dev = keyed_split / "dev_stream.log"
    with pytest.raises(UnlabelledSessionsError) as err:
        load_source([str(dev)], keyed(labels_csv=str(labels)), 64, role="eval")
    assert str(err.value) == (
        f"12 of the 12 session keys in {dev} have no label in {labels} (e.g. 'blk_-7000001000'); the eval files "
        "take data.labels_csv unless data.eval_labels_csv is set: pass their labels with data.eval_labels_csv=FILE, "
        "or list both files in data.labels_csv=[A, B]")
    with pytest.raises(UnlabelledSessionsError, match=r"12 of the 12 .* check data.labels_csv and data.key_regex"):
        load_source([str(dev)], keyed(labels_csv=str(labels)), 64, role="train")


def test_a_list_of_label_files_labels_both_splits(keyed_split: Path) -> None:
    data = keyed(labels_csv=[str(keyed_split / "train_labels.csv"), str(keyed_split / "dev_labels.csv")])
    paths = [str(keyed_split / "train_stream.log"), str(keyed_split / "dev_stream.log")]
    sessions, report = load_source(paths, data, 64, role="eval")
    expected = {**labels_of(keyed_split / "train_labels.csv"), **labels_of(keyed_split / "dev_labels.csv")}
    assert {s.session_id: s.label for s in sessions} == expected and report.total == 0


def test_the_training_run_reads_eval_labels_for_the_eval_files(keyed_split: Path, tmp_path: Path) -> None:
    cfg = load_config(TrainConfig, None, [
        f'data.train=["{keyed_split / "train_stream.log"}"]', f'data.eval=["{keyed_split / "dev_stream.log"}"]',
        "data.format=keyed_log", f"data.labels_csv={keyed_split / 'train_labels.csv'}",
        f"data.eval_labels_csv={keyed_split / 'dev_labels.csv'}", f"output_dir={tmp_path}"])
    train, dev, info = load_run_data(cfg)
    assert (info["train"]["n"], info["train"]["n_anomalous"], info["eval"]["n"], info["eval"]["n_anomalous"]) == \
        (24, 6, 12, 3)
    assert {s.session_id for s in dev} == set(labels_of(keyed_split / "dev_labels.csv"))


def test_partly_unlabelled_keys_are_skipped_with_a_warning_naming_them(keyed_split: Path, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    labels = tmp_path / "some.csv"
    labels.write_text("\n".join((keyed_split / "dev_labels.csv").read_text().splitlines()[:5]) + "\n")
    report = SkipReport()
    with caplog.at_level(logging.WARNING, logger="train.adapters"):
        sessions = sessions_from_keyed_log([keyed_split / "dev_stream.log"], r"(blk_-?\d+)", labels, report)
    assert len(sessions) == 4 and report.counts["line of an unlabelled session"] == 8 * 3
    assert f"8 of the 12 session keys in {keyed_split / 'dev_stream.log'} have no label in {labels} " \
           "(e.g. 'blk_7000001004'); their 24 lines were skipped" in caplog.text


def test_a_session_labelled_twice_differently_is_refused(tmp_path: Path) -> None:
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text("session_id,label\nblk_1,0\nblk_2,1\n")
    second.write_text("session_id,label\nblk_3,0\nblk_2,0\n")
    with pytest.raises(ValueError, match=r"b.csv:3: session 'blk_2' labelled 0 here and 1 at .*a.csv:3"):
        read_session_labels([first, second])
    second.write_text("session_id,label\nblk_2,1\n")  # the same label twice is fine
    assert read_session_labels([first, second]) == {"blk_1": 0, "blk_2": 1}


def test_label_files_per_role() -> None:
    assert DataSection(format="keyed_log", labels_csv="t.csv").label_files("eval") == ["t.csv"]
    data = DataSection(format="keyed_log", labels_csv=["t.csv", "x.csv"], eval_labels_csv="d.csv")
    assert (data.label_files("train"), data.label_files("eval")) == (["t.csv", "x.csv"], ["d.csv"])
    with pytest.raises(ValueError, match=r"data.labels_csv is required with data.format=keyed_log \(\[\]\)"):
        DataSection(format="keyed_log", labels_csv=[]).require_labels_csv()
    with pytest.raises(ValueError, match=r"data.eval_labels_csv must be a file or a list of files \(\[''\]\)"):
        DataSection(format="keyed_log", labels_csv="t.csv", eval_labels_csv=[""])


BGL_CSV = """LineId,Label,Timestamp,Node,Level,Content,EventId,EventTemplate
1,-,1117838570,R02-M1-N0,INFO,instruction cache parity error corrected,E77,instruction cache parity error corrected
2,-,1117838573,R02-M1-N0,INFO,instruction cache parity error corrected,E77,instruction cache parity error corrected
3,KERNDTLB,1117838976,R02-M1-N0,FATAL,data TLB error interrupt,E3,data TLB error interrupt
4,-,1117838978,R02-M1-N0,INFO,generating core.2275,E50,generating core.<*>
5,-,1117838979,R02-M1-N0,INFO,generating core.2276,E50,generating core.<*>
"""


def test_labelled_csv_leaves_label_and_parser_columns_out(tmp_path: Path) -> None:
    path = tmp_path / "BGL.csv"
    path.write_text(BGL_CSV, encoding="utf-8")
    lines = labelled_lines_from_csv(path)
    assert lines[0] == ("1117838570 R02-M1-N0 INFO instruction cache parity error corrected", 0)
    assert [flag for _, flag in lines] == [0, 0, 1, 0, 0]
    assert labelled_lines_from_csv(path, text_columns=["Content"])[2] == ("data TLB error interrupt", 1)


@pytest.mark.parametrize(("row", "error"), [
    ("6,-", "short row (2 of 8 fields; no Timestamp, Node, Level, Content, EventId, EventTemplate)"),
    ("6,-,1117838980,R02-M1-N0,INFO,generating core.2277,E50", "short row (7 of 8 fields; no EventTemplate)"),
    ("6", "short row (1 of 8 fields; no Label, Timestamp, Node, Level, Content, EventId, EventTemplate)"),
    ("6,,1117838980,R02-M1-N0,INFO,generating core.2277,E50,generating core.<*>", "blank label (column Label is "
                                                                                    "empty)"),
    ("6,-,1117838980,R02-M1-N0,INFO,generating, core,E50,generating core.<*>", "long row (9 fields, the header "
                                                                                "has 8)"),
])
def test_a_malformed_csv_row_is_an_error_naming_file_and_line_or_counted(tmp_path: Path, row: str,
                                                                         error: str) -> None:
    """Issue 18.5: a row missing its text columns ended in a TypeError; one missing its label was silently
    labelled anomalous."""
    path = tmp_path / "BGL.csv"
    path.write_text(BGL_CSV + row + "\n" + BGL_CSV.splitlines()[-1] + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        labelled_lines_from_csv(path)
    assert str(info.value) == f"{path}:7: {error}"
    report = SkipReport()
    lines = labelled_lines_from_csv(path, skip_invalid=True, report=report)
    assert [flag for _, flag in lines] == [0, 0, 1, 0, 0, 0] and report.total == 1
    assert report.examples == [f"{path}:7: {error}"]


def test_a_short_csv_row_is_one_cli_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from model.cli import main

    path = tmp_path / "BGL.csv"
    path.write_text(BGL_CSV + "6,-\n", encoding="utf-8")
    assert main(["train", "--data", str(path), "--output-dir", str(tmp_path / "out"), "data.format=labelled_csv"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"logmoe: error: {path}:7: short row (2 of 8 fields; no Timestamp")


def test_labelled_log_cuts_the_label_out(tmp_path: Path) -> None:
    path = tmp_path / "BGL.log"
    path.write_text("- 1117838570 RAS KERNEL INFO ok\nKERNDTLB 1117838976 RAS KERNEL FATAL data TLB error\n"
                    "\n", encoding="utf-8")
    report = SkipReport()
    assert labelled_lines_from_log(path, r"^(\S+)\s", ["-"], report) == [
        ("1117838570 RAS KERNEL INFO ok", 0), ("1117838976 RAS KERNEL FATAL data TLB error", 1)]
    assert report.total == 0


def test_windows_follow_the_worker_rule_and_any_anomalous_line_flags() -> None:
    lines = [(f"line {i}", int(i == 6)) for i in range(10)]
    windows = windows_from_labelled_lines(lines, window=4, hop=2, name="x")
    expected = session_windows([text for text, _ in lines], 4, 2)
    assert [list(w.lines) for w in windows] == expected
    assert [w.label for w in windows] == [int("line 6" in w) for w in expected]
    assert windows[0].session_id == "x:w0"


def test_load_source_for_each_format(tmp_path: Path) -> None:
    csv_path = tmp_path / "BGL.csv"
    csv_path.write_text(BGL_CSV, encoding="utf-8")
    sessions, _ = load_source([str(csv_path)], DataSection(format="labelled_csv", window=2), max_window=64)
    assert [s.label for s in sessions] == [0, 1, 0]  # windows 1-2, 3-4 and, at close, 4-5
    with pytest.raises(ValueError, match="data.window must be <= model.max_window"):
        load_source([str(csv_path)], DataSection(format="labelled_csv", window=100), max_window=64)
    with pytest.raises(ValueError, match=r"data.window_hop must be <= data.window \(3 > 2\)"):
        load_source([str(csv_path)], DataSection(format="labelled_csv", window=2, window_hop=3), max_window=64)
    with pytest.raises(ValueError, match="labels_csv is required"):  # supervised reading needs the labels
        load_source([str(csv_path)], DataSection(format="keyed_log"), max_window=64)


@pytest.mark.data
def test_keyed_adapter_rebuilds_the_hdfs_dev_sessions_from_the_stream(shared_data: Path) -> None:
    hdfs = shared_data / "hdfs"
    if not (hdfs / "dev_stream.log").is_file():
        pytest.skip(f"no HDFS stream in {hdfs}")
    report = SkipReport()
    rebuilt = sessions_from_keyed_log([hdfs / "dev_stream.log"], r"(blk_-?\d+)", hdfs / "dev_labels.csv", report)
    expected = {s.session_id: s for s in load_source([str(hdfs / "dev.jsonl")], DataSection(), 64)[0]}
    assert report.total == 0
    # Every dev session comes back whole: a subset check would pass for an adapter that drops sessions.
    assert len(rebuilt) == len(expected) > 0
    assert {s.session_id for s in rebuilt} == set(expected)
    assert sum(s.label for s in rebuilt) == sum(s.label for s in expected.values()) > 0
    assert all(s.lines == expected[s.session_id].lines and s.label == expected[s.session_id].label for s in rebuilt)


@pytest.mark.data
def test_bgl_structured_csv_windows(shared_data: Path) -> None:
    path = shared_data / "loghub_2k" / "BGL_2k.log_structured.csv"
    if not path.is_file():
        pytest.skip(f"no {path}")
    lines = labelled_lines_from_csv(path)
    assert len(lines) == 2000 and sum(flag for _, flag in lines) == 143
    windows = windows_from_labelled_lines(lines, window=20, hop=20, name=path.name)
    assert len(windows) == 100 and 0 < sum(w.label for w in windows) < 100


@pytest.mark.data
def test_hdfs_real_per_split_label_files_on_slices(shared_data: Path, tmp_path: Path) -> None:
    """The first 3,000 lines of hdfs_real's train_stream.log and dev_stream.log, each labelled by its own file."""
    real = shared_data / "hdfs_real"
    if not (real / "dev_stream.log").is_file():
        pytest.skip(f"no hdfs_real streams in {real}")
    for split in ("train", "dev"):
        with (real / f"{split}_stream.log").open(encoding="utf-8") as handle:
            (tmp_path / f"{split}_stream.log").write_text("".join(next(handle) for _ in range(3000)))
    logs = [str(tmp_path / "train_stream.log")], [str(tmp_path / "dev_stream.log")]
    data = DataSection(format="keyed_log", labels_csv=str(real / "train_labels.csv"),
                       eval_labels_csv=str(real / "dev_labels.csv"))
    train, train_report = load_source(logs[0], data, 64, role="train")
    dev, dev_report = load_source(logs[1], data, 64, role="eval")
    assert train_report.total == dev_report.total == 0
    dev_labels = read_session_labels(real / "dev_labels.csv")
    assert dev and all(dev_labels[s.session_id] == s.label for s in dev)
    assert not {s.session_id for s in train} & {s.session_id for s in dev}
    with pytest.raises(UnlabelledSessionsError, match=rf"{len(dev)} of the {len(dev)} session keys in .*dev_stream.log "
                       r"have no label in .*train_labels.csv \(e.g. 'blk_-?\d+'\); the eval files take"):
        load_source(logs[1], DataSection(format="keyed_log", labels_csv=str(real / "train_labels.csv")), 64,
                    role="eval")
