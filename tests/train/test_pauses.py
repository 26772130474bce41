"""Timestamps read from log lines, the pauses inside sessions, and the session_idle training suggests from them."""

import pytest

from train.pauses import MARGIN, MIN_IDLE, gaps, line_time, longest_pause, measure_pauses

# (a line of each format, the same moment 1 h 2 min 3.5 s later, or None where the format has whole seconds only)
FORMATS = [
    ("081109 203530 147 INFO dfs.DataNode$DataXceiver: Receiving block blk_1",
     "081109 213733 147 INFO dfs.DataNode$DataXceiver: Receiving block blk_1", 3723.0),
    ("1117838570 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872 RAS KERNEL INFO x",
     "1117842293 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-16.44.53.675872 RAS KERNEL INFO x", 3723.0),
    ("2015-10-18 18:01:47,978 INFO [main] MRAppMaster: Created",
     "2015-10-18 19:03:51,478 INFO [main] MRAppMaster: Created", 3723.5),
    ("2016-09-28T04:30:30Z Info CBS Loaded", "2016-09-28T05:32:33Z Info CBS Loaded", 3723.0),
    ("nova-api.log.1.2017-05-16_13:53:08 2017-05-16 00:00:00.008 25746 INFO nova",
     "nova-api.log.1.2017-05-16_13:53:08 2017-05-16 01:02:03.508 25746 INFO nova", 3723.5),
    ("17/06/09 20:10:40 INFO executor.CoarseGrainedExecutorBackend: x",
     "17/06/09 21:12:43 INFO executor.CoarseGrainedExecutorBackend: x", 3723.0),
    ("[Sun Dec 04 04:47:44 2005] [notice] workerEnv.init() ok", "[Sun Dec 04 05:49:47 2005] [notice] ok", 3723.0),
    ("Jun 14 15:16:01 combo sshd(pam_unix)[19939]: authentication failure",
     "Jun 14 16:18:04 combo sshd(pam_unix)[19939]: authentication failure", 3723.0),
    ("Dec 31 23:30:00 host cron[1]: x", "Jan  1 00:32:03 host cron[1]: x", None),  # no year: the wrap is lost
    ("20171223-22:15:29:606|Step_LSC|30002312|onStandStepChanged 3579",
     "20171223-23:17:33:106|Step_LSC|30002312|onStandStepChanged 3579", 3723.5),
    ("03-17 16:13:38.811  1702  2395 D WindowManager: x", "03-17 17:15:42.311  1702  2395 D WindowManager: x",
     3723.5),
    ("[10.30 16:49:06] chrome.exe - proxy open", "[10.30 17:51:09] chrome.exe - proxy open", 3723.0),
]


@pytest.mark.parametrize(("first", "later", "seconds"), FORMATS)
def test_each_format_reads_the_time_between_two_lines(first: str, later: str, seconds: float | None) -> None:
    a, b = line_time(first), line_time(later)
    assert a is not None and b is not None, (first, later)
    if seconds is not None:
        assert b - a == pytest.approx(seconds)


@pytest.mark.parametrize("line", [
    "", "INFO no time here", "134681 node-246 unix.hw state_change.unavailable 1077804742 1 Component",
    "2015-13-45 25:61:61 not a date", "12345 short number", "Receiving block blk_1 at 081109 203530"])
def test_a_line_without_a_timestamp_we_read_has_none(line: str) -> None:
    assert line_time(line) is None


def test_the_longest_pause_skips_untimed_lines_and_counts_lines_out_of_order_as_zero() -> None:
    lines = ["081109 100000 a", "continued stack trace", "081109 100010 b", "081109 100005 late", "081109 100100 c"]
    assert longest_pause(lines) == 55.0  # 100005 -> 100100; 100010 -> 100005 counts 0
    assert longest_pause(["081109 100000 a", "no time"]) is None
    assert longest_pause([]) is None


def test_session_idle_is_the_longest_pause_with_a_margin_and_never_below_the_default() -> None:
    sessions = [["081109 100000 a", "081109 100000 b", "081109 100320 c"],  # 200 s
                ["081109 100000 a", "081109 100010 b"],  # 10 s
                ["081109 100000 lone line"]]  # one line: no pause to measure, not counted
    report = measure_pauses(sessions)
    assert (report.sessions, report.timed, report.longest_s) == (2, 2, 200.0)
    assert report.session_idle == 220.0  # 200 s * MARGIN, rounded up to whole seconds
    assert MARGIN == 1.1
    assert report.to_dict()["session_idle"] == report.session_idle
    assert measure_pauses([["081109 100000 a", "081109 100000 b"]]).session_idle == MIN_IDLE


def test_no_session_idle_when_most_sessions_carry_no_timestamps() -> None:
    untimed = [["GET /a", "GET /b"]] * 3
    report = measure_pauses([["081109 100000 a", "081109 100500 b"], *untimed])
    assert (report.sessions, report.timed, report.longest_s, report.session_idle) == (4, 1, 300.0, None)
    assert measure_pauses(untimed).session_idle is None
    assert measure_pauses([]).to_dict() == {"sessions": 0, "timed": 0, "p50_s": None, "p99_s": None,
                                            "longest_s": None, "session_idle": None}


def test_gaps_measure_each_line_from_the_timed_line_before_it_passing_over_untimed_ones() -> None:
    assert gaps([None, 10.0, None, 25.0, 20.0]) == [None, None, None, 15.0, -5.0]
    assert gaps([]) == []
