"""Hypothesis generators of hostile input lines, each kind with the outcome the worker must give it.

Kinds and outcomes (stream.records): kept lines (counted in lines_in; invalid UTF-8 and lone surrogate escapes
also in lines_utf8_replaced) or skipped lines counted under bad_<reason>. The kept kinds never match a session
regex nor say ERROR, so they go to the catch-all session (or an envelope's source's) and cannot touch the
workload's sessions or alerts. JSON text holds any code point, lone surrogates included: JSON can escape them
(`"\\ud800"`) although no UTF-8 can carry them.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

MAX_LINE_BYTES = 65_536
MB = 1 << 20
_FORBIDDEN = (b"ERROR", b"request_id=", b"blk_", b"\xef\xbf\xbd")  # would join a session, alert, or fake a U+FFFD


def _clean(data: bytes) -> bool:
    return not any(f in data for f in _FORBIDDEN)


_text = st.text(st.characters(codec="utf-8"), max_size=60)  # what bytes on the wire can say
_json_text = st.text(st.characters(), max_size=60)  # what a JSON string can say: lone surrogates too
_surrogate = st.characters(categories=["Cs"])
# "|" on both sides keeps it lone: JSON joins an escaped high and low surrogate into one character
_with_surrogate = st.tuples(_json_text, _surrogate, _json_text).map("|".join)
_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                         _json_text)
_json_value = st.recursive(_json_scalar, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(_json_text, inner, max_size=3), max_leaves=8)

# kind -> (strategy of message values, outcome): outcome is "kept", "replaced" or a bad-input reason.
KINDS: dict[str, tuple[st.SearchStrategy[Any], str]] = {
    "invalid_utf8": (st.tuples(st.binary(max_size=120), st.sampled_from([b"\xff", b"\xfe", b"\xc0\xaf", b"\xed\xa0\x80"]),
                               st.binary(max_size=40))
                     .map(lambda t: b"BAD " + t[0] + t[1] + t[2]).filter(_clean), "replaced"),
    "nul_bytes": (st.lists(_text, min_size=1, max_size=4).map(lambda parts: ("NUL " + "\x00".join(parts) + "\x00")
                                                             .encode()).filter(_clean), "kept"),
    "control_chars": (st.text(st.characters(categories=["Cc"]), min_size=1, max_size=80)
                      .map(lambda t: ("CTL " + t).encode()).filter(_clean), "kept"),
    "empty": (st.one_of(st.none(), st.just(b""),
                        st.text(st.sampled_from(" \t\r\n\x0b\x0c\x1c\u00a0\u2028\u3000"), max_size=30)
                        .map(str.encode)), "empty"),
    "oversized": (st.one_of(st.just(MB), st.integers(MAX_LINE_BYTES + 1, MB)).map(lambda n: b"y" * n), "oversized"),
    # depth up to 10,000: past the interpreter's recursion limit, still under max_line_bytes
    "deep_json": (st.tuples(st.integers(20, 10_000), st.sampled_from(["[", '{"a":']))
                  .map(lambda t: (t[1] * t[0] + "0" + ("]" if t[1] == "[" else "}") * t[0]).encode()),
                  "not_envelope"),
    "not_envelope": (st.one_of(st.dictionaries(_json_text.filter(lambda k: k != "line"), _json_value, max_size=4),
                               st.lists(_json_value, max_size=4),
                               st.fixed_dictionaries({"line": _json_text.filter(str.strip), "extra": _json_value}))
                     .map(lambda d: json.dumps(d).encode()).filter(_clean), "not_envelope"),
    # envelopes whose line, ts or source holds a lone surrogate escape: replaced with U+FFFD and kept (they used to
    # pass the parser and crash the route agent at its UTF-8 encode, losing the rest of its batch)
    "surrogates": (st.one_of(
        st.fixed_dictionaries({"line": _with_surrogate}),
        st.fixed_dictionaries({"line": st.just("SUR x"), "ts": _with_surrogate}),
        st.fixed_dictionaries({"line": st.just("SUR x"), "source": _with_surrogate}),
        st.fixed_dictionaries({"line": _with_surrogate, "ts": _with_surrogate, "source": _with_surrogate}),
    ).map(lambda d: json.dumps(d).encode()).filter(_clean), "replaced"),
    "wrong_type": (st.one_of(
        st.fixed_dictionaries({"line": _json_value.filter(lambda v: not isinstance(v, str))}),
        st.fixed_dictionaries({"line": st.just("x ok"), "ts": st.one_of(st.booleans(), st.lists(_json_scalar),
                                                                        st.dictionaries(_json_text, _json_scalar))}),
        st.fixed_dictionaries({"line": st.just("x ok"), "source": st.one_of(st.integers(), st.booleans(),
                                                                            st.lists(_json_scalar))}),
    ).map(lambda d: json.dumps(d).encode()).filter(_clean), "wrong_type"),
}


def draw(strategy: st.SearchStrategy[Any], n: int, chunk: int = 16) -> list[Any]:
    """n values of a strategy, reproducibly (derandomized), drawn through @given as lists of `chunk` distinct
    values: one value per example would take hypothesis ~45 s for 10,000 here, lists of 16 take ~20 s and still
    give ~78% distinct lines (hypothesis repeats its favourite small values across lists)."""
    out: list[Any] = []

    @settings(max_examples=math.ceil(n / chunk) + 5, database=None, derandomize=True, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.lists(strategy, min_size=chunk, max_size=chunk, unique=True))
    def gather(values: list[Any]) -> None:
        out.extend(values)

    gather()
    while out and len(out) < n:  # a small space (e.g. blank lines) runs out of distinct examples
        out.extend(out[: n - len(out)])
    return out[:n]


def hostile_lines(counts: dict[str, int]) -> list[tuple[str, Any]]:
    """(kind, value) for counts[kind] values of each kind."""
    return [(kind, value) for kind, n in counts.items() for value in draw(KINDS[kind][0], n)]


def expected_counts(lines: list[tuple[str, Any]]) -> Counter[str]:
    """What the worker's counters must say about these lines: bad_<reason>, kept, lines_utf8_replaced."""
    out: Counter[str] = Counter()
    for kind, _ in lines:
        outcome = KINDS[kind][1]
        if outcome in ("kept", "replaced"):
            out["kept"] += 1
            out["lines_utf8_replaced"] += outcome == "replaced"
        else:
            out[f"bad_{outcome}"] += 1
    return out
