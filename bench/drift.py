"""Wording drift: deterministic rewrites of HDFS lines that simulate a software upgrade.

After an upgrade the same events are logged with slightly different words: a word added ("Receiving block" ->
"Receiving data block"), dropped ("... size 67108864" -> "... 67108864") or renamed ("terminating" ->
"exiting", "PacketResponder" -> "PacketResponderThread"). A detector that counts parsed templates (or exact
masked lines) no longer recognises the rewritten lines; one that embeds the words should barely notice.

Each rule rewrites the lines of one HDFS event template (HDFS_templates.csv) and nothing else. The rules are in
a fixed order that interleaves the normal lifecycle's templates with the anomaly-indicating ones, so drifting
"the first k rules" (a fraction of them) is deterministic and touches both kinds. The template-count baseline
needs event ids for drifted lines, as a deployed parser would produce them: `TemplateParser` matches lines
against the original templates (a line no longer matching any is the unknown event "E0").
"""
from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from _common import LabelledSession


@dataclass(frozen=True)
class DriftRule:
    """Rewrite the lines of one template: `pattern` (a regex) is replaced by `replacement` (re.sub syntax)."""

    template: str  # the HDFS event id whose lines this rule rewrites
    change: str  # "added", "dropped" or "renamed"
    pattern: str
    replacement: str
    description: str

    def apply(self, line: str) -> str:
        return re.sub(self.pattern, self.replacement, line, count=1)


# Fixed order: normal-lifecycle templates (E5, E11, E26, E9, E21, E23, E22, E3, E2) alternate with the templates
# that mostly occur in anomalous sessions (E20, E18, E25, E4, E16, E13).
DRIFT_RULES: tuple[DriftRule, ...] = (
    DriftRule("E5", "added", r"Receiving block (blk_)", r"Receiving data block \1",
              '"Receiving block" -> "Receiving data block"'),
    DriftRule("E20", "dropped", r"\. BlockInfo not found in volumeMap", ". not found in volumeMap",
              'drop "BlockInfo" ("... BlockInfo not found in volumeMap")'),
    DriftRule("E11", "renamed", r"(for block blk_-?\d+) terminating", r"\1 exiting",
              '"terminating" -> "exiting"'),
    DriftRule("E18", "added", r"Starting thread to transfer block", "Starting thread to transfer data block",
              '"Starting thread to transfer block" -> "... transfer data block"'),
    DriftRule("E26", "dropped", r"(is added to blk_-?\d+) size (\d+)", r"\1 \2",
              'drop "size" ("is added to blk_.. size N" -> "is added to blk_.. N")'),
    DriftRule("E9", "renamed", r"PacketResponder: Received block", "PacketResponderThread: Received block",
              '"PacketResponder" -> "PacketResponderThread" (logger name of "Received block .. of size")'),
    DriftRule("E25", "renamed", r"to datanode\(s\)", "to datanodes",
              '"datanode(s)" -> "datanodes" ("ask .. to replicate .. to datanode(s)")'),
    DriftRule("E21", "renamed", r"Deleting block (blk_-?\d+) file", r"Deleting replica \1 file",
              '"Deleting block" -> "Deleting replica"'),
    DriftRule("E4", "added", r":Got exception while serving", ":Got an exception while serving",
              '"Got exception" -> "Got an exception"'),
    DriftRule("E23", "added", r"is added to invalidSet of", "is added to the invalidSet of",
              '"added to invalidSet" -> "added to the invalidSet"'),
    DriftRule("E16", "added", r":Transmitted block", ":Transmitted data block",
              '"Transmitted block" -> "Transmitted data block"'),
    DriftRule("E22", "renamed", r"NameSystem\.allocateBlock:", "NameSystem.allocateNewBlock:",
              '"allocateBlock" -> "allocateNewBlock"'),
    DriftRule("E13", "renamed", r"Receiving empty packet for block", "Received empty packet for block",
              '"Receiving empty packet" -> "Received empty packet"'),
    DriftRule("E3", "added", r" Served block ", " Served data block ", '"Served block" -> "Served data block"'),
    DriftRule("E2", "added", r"Verification succeeded for (blk_)", r"Verification succeeded for block \1",
              '"Verification succeeded for" -> "... for block"'),
)


def rules_for_fraction(fraction: float, rules: Sequence[DriftRule] = DRIFT_RULES) -> tuple[DriftRule, ...]:
    """The first ceil(fraction * len(rules)) rules (0 -> none, 1 -> all)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"drift fraction must be in [0, 1], got {fraction!r}")
    return tuple(rules[: math.ceil(fraction * len(rules) - 1e-9)])


def drift_line(line: str, event_id: str, rules: Sequence[DriftRule]) -> str:
    for rule in rules:
        if rule.template == event_id:
            return rule.apply(line)
    return line


def drift_sessions(sessions: Iterable[LabelledSession], rules: Sequence[DriftRule]) -> list[LabelledSession]:
    """Rewrite each line of a drifted template; event ids say which template a line belongs to (they come
    with the data, so the rewrite is exact). The returned event ids are the ORIGINAL ones: baselines that need
    ids for drifted lines must parse them (`TemplateParser`), as a deployed parser would."""
    by_template = {rule.template: rule for rule in rules}
    out = []
    for s in sessions:
        if len(s.event_ids) != len(s.lines):
            raise ValueError(f"session {s.session_id}: {len(s.lines)} lines but {len(s.event_ids)} event ids")
        lines = tuple(by_template[e].apply(line) if e in by_template else line
                      for line, e in zip(s.lines, s.event_ids))
        out.append(replace(s, lines=lines))
    return out


def check_rules_fire(sessions: Sequence[LabelledSession], rules: Sequence[DriftRule]) -> dict[str, int]:
    """How many lines each rule changed; a rule that changes nothing is a bug in the rule (ValueError)."""
    changed = {rule.template: 0 for rule in rules}
    by_template = {rule.template: rule for rule in rules}
    for s in sessions:
        for line, e in zip(s.lines, s.event_ids):
            rule = by_template.get(e)
            if rule is not None and rule.apply(line) != line:
                changed[e] += 1
    present = {e for s in sessions for e in s.event_ids}
    dead = [t for t, n in changed.items() if n == 0 and t in present]
    if dead:
        raise ValueError(f"drift rules for {dead} match none of their template's lines")
    return changed


class TemplateParser:
    """Line -> event id by matching the original templates (`<*>` = any text); no match -> "E0" (unknown).

    Where several templates match, the one with the most literal characters wins (the most specific)."""

    UNKNOWN = "E0"

    def __init__(self, templates_csv: Path) -> None:
        with Path(templates_csv).open(encoding="utf-8", newline="") as handle:
            rows = [(row["EventId"], row["EventTemplate"]) for row in csv.DictReader(handle)]
        if not rows:
            raise ValueError(f"no templates in {templates_csv}")
        rows.sort(key=lambda r: -len(r[1].replace("<*>", "")))  # most specific first
        self._templates = [(eid, re.compile(".*?".join(map(re.escape, t.split("<*>"))), re.S)) for eid, t in rows]
        self._cache: dict[str, str] = {}

    def parse(self, line: str) -> str:
        """Event id of one line. Call it on masked lines: masking keeps every template word, and the few
        distinct masked lines make the cache effective (raw lines are all distinct)."""
        found = self._cache.get(line)
        if found is None:
            found = next((eid for eid, rx in self._templates if rx.search(line)), self.UNKNOWN)
            self._cache[line] = found
        return found

    def parse_session(self, lines: Sequence[str]) -> list[str]:
        return [self.parse(line) for line in lines]
