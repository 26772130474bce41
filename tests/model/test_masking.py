"""mask(): literal cases that always run, real loghub lines (skipped without the shared data), idempotence."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.masking import PLACEHOLDERS, mask

LITERAL_CASES = [
    # IPs, with and without ports; a leading slash stays, the IP is not a path
    ("connect to 10.0.0.1:8080 failed", "connect to <IP> failed"),
    ("src: /10.251.37.240:35757 dest: /10.251.37.240:50010", "src: /<IP> dest: /<IP>"),
    ("10.250.99.214:50010:Got exception", "<IP>:Got exception"),
    ("listening on ::1 port 22", "listening on <IP> port <NUM>"),
    ("addr fe80::1ff:fe23:4567:890a up", "addr <IP> up"),
    ("QuorumPeer[myid=1]/0:0:0:0:0:0:0:0:2181", "QuorumPeer[myid=<NUM>]/<IP>"),
    ("from 00:1a:2b:3c:4d:5e via eth1", "from <HEX> via eth1"),
    # UUIDs and hex
    ("[req-38101a0b-2096-447d-96ea-a692162415ae", "[req-<UUID>"),
    ("stack @0x7fed806eb5d @0xff83e97c", "stack @<HEX> @<HEX>"),
    ("tenant 113d3a99c3da401fbd62cc2caa5b96d2 -", "tenant <HEX> -"),
    ("AppWindowToken{9f4ef63 token=Token{a64f992", "AppWindowToken{<HEX> token=Token{<HEX>"),
    # paths and URLs; a one-segment path stays a word
    ("workerEnv.init() ok /etc/httpd/conf/workers2.properties", "workerEnv.init() ok <PATH>"),
    (r"Loaded Servicing Stack with Core: C:\Windows\winsxs\cbscore.dll", "Loaded Servicing Stack with Core: <PATH>"),
    ("mkdir /tmp failed", "mkdir /tmp failed"),
    ("see http://example.com/a?b=1 now", "see <URL> now"),
    # HDFS block ids, positive and negative
    ("blk_-9251277714010060167 and blk_38865049064139660", "<BLK> and <BLK>"),
    # timestamps of the 16 loghub systems
    ("081109 203615 148 INFO dfs.DataNode", "<TS> <NUM> INFO dfs.DataNode"),
    ("2015-10-18 18:01:47,978 INFO [main]", "<TS> INFO [main]"),
    ("2017-05-16T00:00:00.008Z x", "<TS> x"),
    ("Jun 14 15:16:01 combo sshd", "<TS> combo sshd"),
    ("Jul  9 12:16:49 combo ftpd", "<TS> combo ftpd"),
    ("[Sun Dec 04 04:47:44 2005] [notice]", "[<TS>] [notice]"),
    ("17/06/09 20:10:40 INFO executor", "<TS> INFO executor"),
    ("20171223-22:15:29:606|Step_LSC|30002312|", "<TS>|Step_LSC|<NUM>|"),
    ("20171224-0:28:0:83|Step_LSC", "<TS>|Step_LSC"),
    ("2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872 RAS", "<TS> <ID> <TS> RAS"),
    ("03-17 16:13:38.811  1702  2395 D WindowManager", "<TS> <NUM> <NUM> D WindowManager"),
    ("[10.30 16:49:06] chrome.exe", "[<TS>] chrome.exe"),
    ("00000001@2016/9/27:20:30:31.455 WcpInitialize", "<NUM>@<TS> WcpInitialize"),
    ("lifetime 00:01", "lifetime <TS>"),
    # numbers: delimited ones go (``_`` and ``-`` delimit), ones glued to letters stay, units stay
    ("of size 67108864 from", "of size <NUM> from"),
    ("generating core.4900", "generating core.<NUM>"),
    ("Found block rdd_21_0 locally", "Found block rdd_<NUM>_<NUM> locally"),
    ("node node-246 has", "node node-<NUM> has"),
    ("keyId: -127633188)", "keyId: <NUM>)"),
    ("Loaded 6.1.7601.23505 and v1.2", "Loaded <NUM> and <NUM>"),
    ("phys_ram=64172MB used 5ms", "phys_ram=<NUM>MB used <NUM>ms"),
    ("Failed password for root port 34100 ssh2", "Failed password for root port <NUM> ssh2"),
    ("Word2Vec on x86_64 with sha256", "Word2Vec on x86_<NUM> with sha256"),
    # host and slot codes
    ("dn228/dn228 crond", "<ID>/<ID> crond"),
    ("Lustre mount FAILED : bglio136 : point", "Lustre mount FAILED : <ID> : point"),
    ("ciod: Error loading /home/yates//bandwidth.rts: invalid", "ciod: Error loading <PATH>: invalid"),
    ("Package_for_KB3149090~31bf3856ad364e35~amd64", "Package_for_<ID>~<HEX>~amd64"),
    # whitespace runs collapse; C++ scopes are not IPv6
    ("a  b\t c ", "a b c"),
    ("AppleCamIn::systemWakeCall - messageType", "AppleCamIn::systemWakeCall - messageType"),
]


@pytest.mark.parametrize(("line", "expected"), LITERAL_CASES)
def test_literal_cases(line: str, expected: str) -> None:
    assert mask(line) == expected


def test_placeholders_are_plain_bracketed_words() -> None:
    assert set(PLACEHOLDERS.values()) == {"<URL>", "<UUID>", "<HEX>", "<IP>", "<TS>", "<BLK>", "<PATH>", "<NUM>",
                                          "<ID>"}


def test_mask_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="bytes"):
        mask(b"081109 203615 148 INFO")  # type: ignore[arg-type]


# ---- idempotence -------------------------------------------------------------------------------------------

_PIECES = [
    "blk_-123", "10.0.0.1", ":50010", "0x1f", "/a/b", "C:\\x", "12:30:45", "2015-10-18", "Jun 14", " ", "  ", "-", "_",
    ".", ":", "::", "/", "@", "<", ">", "<NUM>", "abc", "dn228", "R02-M1-N0", "ff", "e3", "1", "22", "333", "4444",
    "v", "x86", "MB", "ms", "http://h/p", "deadbeef12", "~", "T", "Z", "\t",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=14).map("".join))
def test_mask_is_idempotent_on_tricky_pieces(line: str) -> None:
    once = mask(line)
    assert mask(once) == once


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789abcdefxABCDEFX.:-_/ \\@blk", max_size=40))
def test_mask_is_idempotent_on_random_text(line: str) -> None:
    once = mask(line)
    assert mask(once) == once


# ---- real lines (../shared/data/loghub_2k) ---------------------------------------------------------------------

_LOGHUB_SYSTEMS = ["Android", "Apache", "BGL", "HDFS", "HPC", "Hadoop", "HealthApp", "Linux", "Mac", "OpenSSH",
                   "OpenStack", "Proxifier", "Spark", "Thunderbird", "Windows", "Zookeeper"]


def _loghub_lines(shared_data: Path, system: str) -> list[str]:
    path = shared_data / "loghub_2k" / f"{system}_2k.log"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


# (system, a regex picking the lines of one template, the one masked string they must all collapse to)
_TEMPLATES = [
    ("HDFS", "Receiving block",
     "<TS> <NUM> INFO dfs.DataNode$DataXceiver: Receiving block <BLK> src: /<IP> dest: /<IP>"),
    ("HDFS", "addStoredBlock: blockMap updated",
     "<TS> <NUM> INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap updated: <IP> is added to <BLK> "
     "size <NUM>"),
    ("HDFS", "NameSystem.allocateBlock",
     "<TS> <NUM> INFO dfs.FSNamesystem: BLOCK* NameSystem.allocateBlock: <PATH> <BLK>"),
    ("Apache", "Found child", "[<TS>] [notice] jk2_init() Found child <NUM> in scoreboard slot <NUM>"),
    ("BGL", "generating core", "- <NUM> <TS> <ID> <TS> <ID> RAS KERNEL INFO generating core.<NUM>"),
    ("OpenSSH", r"\]: Failed password for root from",
     "<TS> LabSZ sshd[<NUM>]: Failed password for root from <IP> port <NUM> ssh2"),
    ("Zookeeper", "Received connection request",
     "<TS> - INFO [/<IP>:QuorumCnxManager$Listener@<NUM>] - Received connection request /<IP>"),
    ("Spark", "Running task", "<TS> INFO executor.Executor: Running task <NUM> in stage <NUM> (TID <NUM>)"),
    # host codes need 2+ digits to be an <ID> (bn1 stays: it is shaped like eth1 or ssh2)
    ("Thunderbird", r" [a-z]n\d\d+ .*synchronized to \d",
     "- <NUM> <TS> <ID> <TS> <ID>/<ID> ntpd[<NUM>]: synchronized to <IP>, stratum <NUM>"),
    ("Android", r"Acquiring suspend blocker \"PowerManagerService\.WakeLocks\"",
     "<TS> <NUM> <NUM> D PowerManagerService: Acquiring suspend blocker \"PowerManagerService.WakeLocks\"."),
]


_TEMPLATE_IDS = [f"{system}:{re.sub(r'[^A-Za-z ]', '', needle)[:24]}" for system, needle, _ in _TEMPLATES]


@pytest.mark.data
@pytest.mark.parametrize(("system", "needle", "expected"), _TEMPLATES, ids=_TEMPLATE_IDS)
def test_real_lines_of_one_template_collapse(shared_data: Path, system: str, needle: str, expected: str) -> None:
    lines = [line for line in _loghub_lines(shared_data, system) if re.search(needle, line)]
    assert len(lines) >= 3, f"too few {needle!r} lines in {system}"
    assert {mask(line) for line in lines} == {expected}


_MONTHS_AND_DAYS = {"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
                    "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun", "UTC", "GMT"}  # part of a <TS>
_WORD = re.compile(r"[A-Za-z]{3,}[,.:;]?")


@pytest.mark.data
@pytest.mark.parametrize("system", _LOGHUB_SYSTEMS)
def test_real_lines_keep_their_words_and_shrink(shared_data: Path, system: str) -> None:
    """Whitespace-delimited words survive masking (the encoder reads them); the lines collapse into templates."""
    lines = _loghub_lines(shared_data, system)
    masked = [mask(line) for line in lines]
    for line, out in zip(lines, masked):
        words = {w.rstrip(",.:;") for w in line.split() if _WORD.fullmatch(w)} - _MONTHS_AND_DAYS
        kept = set(re.findall(r"[A-Za-z]+", out))
        assert words <= kept, f"{system}: lost {words - kept} in {line!r} -> {out!r}"
        assert mask(out) == out
    assert len(set(masked)) < 0.35 * len(set(lines)), f"{system}: {len(set(masked))} distinct masked lines"
