"""Line masking: replace the variable parts of a raw log line with stable placeholders.

Lines of one template (one logging statement) should collapse to one masked string, so the embedding cache
encodes each template once and the model sees the words, not the ids. One pass over one precompiled regex:
an alternation of named groups, the replacement chosen by the name of the group that matched.

Rules, tried in this order at each position (a token is "delimited" when no letter, digit or placeholder
touches it on either side; ``_``, ``-``, ``.`` and other punctuation delimit):
- ``<URL>``  scheme://...
- ``<UUID>`` 8-4-4-4-12 hex.
- ``<HEX>``  MAC addresses (aa:bb:cc:dd:ee:ff); see also below.
- ``<IP>``   IPv4 (optionally ``:port``), IPv6 (8 groups or with ``::``, optionally ``:port``).
- ``<TS>``   dates and times: ISO and numeric dates (with an optional time), syslog/ctime month-name stamps,
  bare ``hh:mm[:ss[.fff]]``, ``MM-DD hh:mm:ss`` (Android), ``YYYYMMDD-h:m:s:ms`` (HealthApp), and the HDFS
  ``yymmdd hhmmss`` header at the start of a line.
- ``<BLK>``  HDFS block ids ``blk_-?\\d+``.
- ``<PATH>`` absolute Unix paths of two or more segments (``/a/b``, doubled slashes too: ``/home/u//x.rts``),
  Windows paths (``C:\\...``).
  A single segment (``/tmp``) stays a word; ``/10.1.2.3`` is an IP, not a path.
- ``<HEX>``  ``0x..`` literals and delimited hex runs of 6+ characters with both a digit and a letter a-f.
- ``<NUM>``  delimited numbers (optional sign, decimals, versions such as ``6.1.7601`` or ``v1.2``). A number
  glued to letters stays (``core4900`` is kept, ``core.4900`` -> ``core.<NUM>``, ``rdd_21_0`` ->
  ``rdd_<NUM>_<NUM>``), except before a unit, which stays after the placeholder (``64172MB`` -> ``<NUM>MB``).
- ``<ID>``   host and slot codes that vary per line: a letter prefix with 2+ digits (``dn228``, ``R71``,
  ``bglio136``, ``KB3149090``), any letter-digit token with 4+ digits, and BlueGene/L locations (``R02-M1-N0-C:J12-U11``).
  Technical words of that shape stay (``x86``, ``win32``, ``sha256``, ``utf16``), as do codes with fewer
  digits (``ssh2``, ``eth1``, ``bn1``).

Words stay: the encoder reads them. Runs of whitespace become one space.

Idempotent, ``mask(mask(x)) == mask(x)``: placeholders hold no digit, slash, colon or dot, so no rule matches
inside one, and a placeholder counts as glued text for the token next to it (that token was either glued to
what was masked, so not masked then and not now, or masked in the same pass).
"""

from __future__ import annotations

import functools
import re

__all__ = ["PLACEHOLDERS", "mask"]

# A token is delimited: not preceded / followed by a letter, a digit or a placeholder. Counting a placeholder as
# glued text is what makes mask idempotent: a token right after one was, before masking, either glued to the
# masked token (not masked then, so not now) or masked in the same pass (so not there any more).
_L = r"(?<![A-Za-z0-9])(?<!<[A-Z]{2}>)(?<!<[A-Z]{3}>)(?<!<[A-Z]{4}>)"
_R = r"(?![A-Za-z0-9]|<[A-Z]{2,4}>)"

_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*"
_DOW = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*"
_TIME = r"\d{1,2}:(?:\d{1,2}:\d{1,2}(?:[.,:]\d{1,9})?|\d{2})(?:\s?(?:Z|[AP]M|UTC|GMT)|[+-]\d{2}:?\d{2})?"
_TIME_DOTS = r"\d{1,2}\.\d{2}\.\d{2}(?:\.\d{1,9})?"  # BGL: 2005-06-03-15.42.50.675872
_DATE = r"(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}/\d{1,2}/\d{2,4})"
_HEX4 = r"[0-9A-Fa-f]{1,4}"
_IPV4 = r"(?:\d{1,3}\.){3}\d{1,3}"
_IPV6 = (
    rf"(?:(?:{_HEX4}:){{7}}{_HEX4}"  # full form
    rf"|(?:{_HEX4}(?::{_HEX4})*)?::{_HEX4}(?::{_HEX4})*"  # compressed, ends in a group: ::1, fe80::1
    rf"|{_HEX4}(?::{_HEX4})*::)"  # compressed, ends in :: (fe80::)
)
# BlueGene/L node locations (R02-M1-N0-C:J12-U11): one node name per line in BGL logs.
_BGL_LOCATION = r"R\d{2}-M\d-[NL][0-9A-F](?:-[A-Z]:J\d{2}-U\d{2})?"
# Host and slot codes: a letter prefix and 2+ digits (dn228, R71, KB3149090; bglio136, the BGL I/O node that
# names each "Lustre mount FAILED" line: with a 1-3 letter prefix only, September's 618 such lines masked to 464
# distinct strings), or any letter-digit token with 4+ digits. Technical words of that shape are kept.
_CODE = r"(?:[A-Za-z]+\d{2,}|(?=[A-Za-z0-9]*[A-Za-z])(?=(?:[A-Za-z]*\d){4})[A-Za-z0-9]+)"
_KEEP_WORDS = (
    r"(?i:x86|x64|win32|win64|amd64|arm64|i386|i686|utf8|utf16|utf32|sha\d+|md\d|base64|u?int\d+|float\d+"
    r"|ipv[46]|http[123])"
)
_UNITS = r"(?:[KMGTP]i?B|[kKMG]b(?:ps|it)?|bytes?|[mun]?s|secs?|min|[kMG]?Hz|px|dp|%)"

_RULES: tuple[tuple[str, str], ...] = (
    ("URL", r"\b[A-Za-z][A-Za-z0-9+.\-]*+://[^\s\"'<>()\[\]{}]+"),
    ("UUID", r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}" + _R),
    ("MAC", r"(?:[0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}" + _R),
    ("IP", rf"(?=[0-9A-Fa-f:])(?:{_IPV4}|{_IPV6})(?::\d{{1,5}})?" + r"(?![A-Za-z0-9]|[.:](?:\d|<[A-Z]{2,4}>)|<[A-Z]{2,4}>)"),
    (
        "TS",
        r"(?=[0-9A-Z])(?:"
        + rf"{_DATE}(?:(?:[T_:-]|\s+)(?:{_TIME}|{_TIME_DOTS}))?"
        + rf"|(?:{_DOW},?\s+)?{_MONTH}\.?\s+\d{{1,2}}(?:,?\s+\d{{4}})?\s+{_TIME}(?:\s+\d{{4}}(?!\d))?"
        + rf"|\d{{8}}[-T]?{_TIME}"
        + rf"|\d{{1,2}}[-.]\d{{1,2}}\s+{_TIME}"
        + r"|^\d{6}\s\d{6}"
        + rf"|{_TIME}"
        + r")"
        + r"(?![A-Za-z0-9:]|<[A-Z]{2,4}>)",
    ),
    ("BLK", r"\bblk_-?\d+" + _R),
    ("PATH", r"(?<![A-Za-z0-9/])(?:\.{1,2}|~)?(?:/+[\w.\-@~+%=,$]+){2,}/?|" + r"[A-Za-z]:\\[^\s\"'<>|]*"),
    ("HEX", r"(?:0[xX][0-9A-Fa-f]+|(?=\d*+[A-Fa-f])(?=[A-Fa-f]*+\d)[0-9A-Fa-f]{6,})" + _R),
    ("NUM", r"(?:[vV](?=\d+\.\d))?[-+]?\d+(?:\.\d+)*" + rf"(?=(?:{_UNITS})?{_R})"),
    ("ID", rf"(?=[A-Za-z]*+\d)(?:{_BGL_LOCATION}|(?!{_KEEP_WORDS}{_R}){_CODE})" + _R),
)

# Speed (the worker masks every line it scores, in its scoring process or thread): each rule fails as
# early as it can on the plain words that make up most of a line, without changing what it matches. The
# leading lookaheads of IP, TS and ID only restate what every branch of the rule needs (IP starts with a hex
# digit or ':', TS with a digit or a capitalised month/day name, ID has a digit after its leading letters), and
# the possessive `*+` in URL and HEX cannot give back a match: the class they repeat excludes what follows.
# Together about 1.9x faster, with the same output on every line of HDFS dev_stream.log and loghub_2k
# (BENCHMARKS.md, "Performance").

# Rule name -> placeholder; a MAC address reads as hex to the encoder.
PLACEHOLDERS: dict[str, str] = {name: "<HEX>" if name == "MAC" else f"<{name}>" for name, _ in _RULES}

# Every rule starts at a delimited position (_L) with one of _FIRST_CHARS; checking that once, up front, lets
# the scan skip other positions without trying each alternative (about 2.5x faster than without).
_FIRST_CHARS = r"[0-9A-Za-z./~:+\-]"
_PATTERN = re.compile(_L + f"(?={_FIRST_CHARS})(?:" + "|".join(f"(?P<{name}>{rx})" for name, rx in _RULES) + ")")


def _replace(match: re.Match[str]) -> str:
    return PLACEHOLDERS[match.lastgroup]  # type: ignore[index]  # every alternative is a named group


def mask(line: str) -> str:
    """Return ``line`` with its variable tokens replaced by placeholders (see the module docstring).

    Runs of whitespace become one space (aligned columns such as Android's padded pids then agree).
    """
    if not isinstance(line, str):
        raise ValueError(f"mask expects a str, got {type(line).__name__}: {line!r}")
    return _PATTERN.sub(_replace, " ".join(line.split()))


# Raw line -> masked line, cached. Sliding windows (hop < window) mask each raw line in several windows, across calls
# in the stream worker; bounded, so a stream of unique raw lines cannot grow it.
mask_cached = functools.lru_cache(maxsize=1 << 15)(mask)
