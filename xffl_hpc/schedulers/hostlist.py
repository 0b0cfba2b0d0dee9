"""SLURM hostlist expressions: ``expand("gpu[001-002],login-[1-2]a")`` and back.

``expand`` follows the parser of current SLURM, ``src/common/hostlist.c`` (``hostlist_create``
with ``_next_tok``, ``_parse_single_range`` and ``_push_range_list``, one-dimensional
clusters), so it lists the hosts ``scontrol show hostnames`` prints, in the same order.
Grammar, as that code reads it:

- Names are separated by runs of ``,`` `` `` ``\\t`` ``\\n`` (newline since SLURM 23.02.0);
  empty names vanish, so ``""`` and ``" , "`` are empty hostlists. A separator between a ``[``
  and the next ``]`` belongs to the name; that pairing stops at a ``]`` before the next ``[``.
- A name without ``[`` is one host, verbatim.
- Otherwise its *last* ``[`` and the first ``]`` after it enclose the range list; a missing
  ``]`` is an error (since SLURM 23.02.0) and text after ``]`` is a suffix appended to every
  host (since 23.02.5).
- Range list: ``range(,range)*``; a range is ``low``, ``low-`` or ``low-high`` (``low <= high``,
  at most ``MAX_RANGE`` hosts, no ``x``, no step). Numbers are read like C ``strtoul``:
  blanks, an optional sign, decimal digits; text after the digits of ``low`` is ignored when a
  ``-`` follows. Every number of the range is zero-padded to ``len(low)``, so ``[01-10]``
  gives 01..10, ``[1-010]`` and ``[9-11]`` give 1..10 and 9..11 unpadded.
- The text before ``[`` may hold more bracket groups, found from the right (the last ``[`` and
  the last ``]`` after it), each with at most ``MAX_PREFIX_COUNT`` hosts. The name gives their
  cartesian product, varying the last group fastest, then the first, the second, and so on:
  ``a[1-2]b[3-4]`` -> a1b3 a1b4 a2b3 a2b4, ``a[1-2]b[3-4]c[5-6]`` -> a1b3c5 a1b3c6 a2b3c5 ...

Where SLURM misbehaves this module refuses instead: an invalid or oversized bracket group third
from last or earlier (SLURM silently drops some or all of the name's hosts), numbers above
2**64-1 (SLURM clamps them; a bare name keeps its digits here), ASCII control characters other
than tab and newline (SLURM's prefix comparison ignores ``\\r``, ``\\v``, ``\\f`` and merges
names), and expressions beyond the limits below. ``{...}`` hostlist functions, which need a
controller, are plain text.

``compress`` prints what ``scontrol show hostlist`` prints for the same names (order and
duplicates kept, runs of consecutive numbers merged when the padding allows), except that it
splits runs longer than ``MAX_RANGE``, which SLURM could not read back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, groupby, product, repeat
from operator import itemgetter, le, sub
from typing import NamedTuple, NoReturn

from xffl_hpc.errors import HostlistError
from xffl_hpc.schedulers.variables import quote

__all__ = [
    "MAX_EXPANDED_LENGTH",
    "MAX_EXPRESSION_LENGTH",
    "MAX_HOSTS",
    "MAX_PREFIX_COUNT",
    "MAX_RANGE",
    "compress",
    "count",
    "expand",
]

MAX_HOSTS = 1_000_000
"""Most hosts one expression may expand to: 15 times MAX_SLURM_NODES (65536), the most nodes a
SLURM cluster can have, yet small enough for the list to take well under 100 MB."""

MAX_EXPRESSION_LENGTH = 128 * 1024
"""Longest expression accepted: SLURM's MAX_ENV_STRLEN (src/common/env.c); SLURM does not
export a longer environment variable."""

MAX_EXPANDED_LENGTH = 64 * 1024 * 1024
"""Most characters all expanded names may hold together (an upper bound computed before
expanding), so that long names cannot multiply into gigabytes."""

MAX_RANGE = 65536
"""Most hosts in one range such as ``[1-65536]``: SLURM's MAX_RANGE."""

MAX_PREFIX_COUNT = 65536
"""Most hosts in a bracket group before the last one of a name: SLURM's MAX_PREFIX_CNT."""

_ULONG_MAX = 2**64 - 1
_DIGITS = "0123456789"
_BLANKS = " \t\n"
_NAME_START = re.compile(r"[^, \t\n]")
_SEPARATOR = re.compile(r"[, \t\n]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_UNUSABLE = re.compile(r"[\x00-\x1f\x7f, \[\]]")
_PLAIN_RANGES = re.compile(r"[0-9]{1,19}(?:-[0-9]{1,19})?(?:,[0-9]{1,19}(?:-[0-9]{1,19})?)*")
_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?")

_Range = tuple[int, int, int]
"""``(low, high, width)`` of one range."""


class _Pattern(NamedTuple):
    """A name with brackets: ``head``, prefix groups with the text after each, ranges, suffix."""

    head: str
    groups: list[tuple[list[_Range], str]]
    ranges: list[_Range]
    suffix: str


@dataclass(slots=True)
class _Run:
    """Consecutive numbered names ``prefix`` + ``low``..``high``, zero-padded to ``width``."""

    prefix: str
    low: int
    high: int
    width: int

    def text(self) -> str:
        """``low`` or ``low-high`` as a range list item."""
        low = f"{self.low:0{self.width}d}"
        return low if self.high == self.low else f"{low}-{self.high:0{self.width}d}"


def _measure(ranges: list[_Range]) -> tuple[int, int]:
    """Number of hosts in ``ranges`` and length of the longest number they print."""
    lows, highs, widths = zip(*ranges, strict=True)
    return sum(highs) - sum(lows) + len(ranges), max(len(str(max(highs))), max(widths))


def _numbers(ranges: list[_Range], before: str = "", after: str = "") -> list[str]:
    """``before`` + each zero-padded number of ``ranges`` + ``after``, in order."""
    texts: list[str] = []
    for width, batch in groupby(ranges, key=itemgetter(2)):
        lows, highs, _ = zip(*batch, strict=True)
        numbers = map(str, chain.from_iterable(map(range, lows, map((1).__add__, highs))))
        if len(str(min(lows))) < width:
            numbers = map(str.zfill, numbers, repeat(width))
        if before:
            numbers = map(before.__add__, numbers)
        if after:
            numbers = map(str.__add__, numbers, repeat(after))
        texts.extend(numbers)
    return texts


class _Parser:
    """Parses one expression into bare names and patterns, counting hosts as it goes."""

    def __init__(self, expression: object, variable: str) -> None:
        if not isinstance(expression, str):
            raise HostlistError(f"{variable}: expected a string, got {type(expression).__name__}")
        self.variable = variable
        self.text = expression
        self.names: list[str | _Pattern] = []
        self.hosts = 0
        self.length = 0
        if len(expression) > MAX_EXPRESSION_LENGTH:
            self.fail(f"longer than {MAX_EXPRESSION_LENGTH} characters")
        control = _CONTROL.search(expression)
        if control:
            self.fail(f"control character {control.group()!r} at position {control.start()}")
        if "[" in expression:
            for start, end in self._spans():
                self._name(start, end)
        else:  # only bare names; too few to reach the limits
            self.names = [name for name in _SEPARATOR.split(expression) if name]
            self.hosts = len(self.names)

    def fail(self, reason: str) -> NoReturn:
        """Raise a HostlistError naming the variable, its value and ``reason``."""
        raise HostlistError(f"{self.variable}={quote(self.text)}: {reason}")

    def _spans(self) -> Iterator[tuple[int, int]]:
        """``(start, end)`` of each name; separators between paired brackets stay inside."""
        text = self.text
        close = -2  # a ']' found from some earlier position, or -1 when none remains
        position = 0
        while start_match := _NAME_START.search(text, position):
            start = start_match.start()
            end = self._separator(start)
            scan = start
            while (opening := text.find("[", scan, end)) >= 0:
                if close != -1 and close < scan:
                    close = text.find("]", scan)
                if close < opening:
                    break
                scan = close + 1
                if close > end:
                    end = self._separator(scan)
            yield start, end
            position = end

    def _separator(self, position: int) -> int:
        """Index of the first separator at or after ``position``, or the text's length."""
        match = _SEPARATOR.search(self.text, position)
        return match.start() if match else len(self.text)

    def _name(self, start: int, end: int) -> None:
        """Parse the name ``text[start:end]`` and add its hosts to the count."""
        name = self.text[start:end]
        opening = name.rfind("[")
        if opening < 0:
            self._add(name, 1, len(name))
            return
        closing = name.find("]", opening + 1)
        if closing < 0:
            self.fail(f"unclosed '[' at position {start + opening}")
        ranges = self._ranges(name[opening + 1 : closing], start + opening + 1)
        total, longest = _measure(ranges)
        longest += len(name) - closing - 1
        groups: list[tuple[list[_Range], str]] = []
        limit = opening
        while (left := name.rfind("[", 0, limit)) >= 0:
            right = name.rfind("]", left, limit)
            if right < 0:
                break
            group = self._ranges(name[left + 1 : right], start + left + 1)
            hosts, digits = _measure(group)
            if hosts > MAX_PREFIX_COUNT:
                self.fail(
                    f"bracket group at position {start + left} has more than "
                    f"{MAX_PREFIX_COUNT} hosts"
                )
            groups.append((group, name[right + 1 : limit]))
            total *= hosts
            longest += digits + limit - right - 1
            limit = left
            if self.hosts + total > MAX_HOSTS:
                self._too_many()
        groups.reverse()
        pattern = _Pattern(name[:limit], groups, ranges, name[closing + 1 :])
        self._add(pattern, total, total * (longest + limit))

    def _add(self, name: str | _Pattern, hosts: int, length: int) -> None:
        """Record ``name`` with its host count and an upper bound on its expanded length."""
        self.hosts += hosts
        self.length += length
        if self.hosts > MAX_HOSTS:
            self._too_many()
        if self.length > MAX_EXPANDED_LENGTH:
            self.fail(f"expands to more than {MAX_EXPANDED_LENGTH} characters")
        self.names.append(name)

    def _too_many(self) -> NoReturn:
        """Refuse an expansion of more than MAX_HOSTS hosts."""
        self.fail(f"expands to more than {MAX_HOSTS} hosts")

    def _ranges(self, body: str, position: int) -> list[_Range]:
        """Parse the comma-separated ranges ``body`` found at ``position``."""
        if _PLAIN_RANGES.fullmatch(body):
            ranges = [
                (first := int(low), int(high) if high else first, len(low))
                for low, high in _RANGE.findall(body)
            ]
            lows, highs, _ = zip(*ranges, strict=True)
            if all(map(le, lows, highs)) and max(map(sub, highs, lows)) < MAX_RANGE:
                return ranges
        ranges = []
        for item in body.split(","):
            ranges.append(self._range(item, position))
            position += len(item) + 1
        return ranges

    def _range(self, item: str, position: int) -> _Range:
        """Parse one range: ``low``, ``low-`` or ``low-high``."""
        low_text, _, high_text = item.partition("-")
        if "x" in item or high_text.startswith("-"):
            self._invalid(item, position)
        low, used = self._strtoul(low_text, position)
        if not used:
            self._invalid(item, position)
        if high_text:
            high, used = self._strtoul(high_text, position)
            if used != len(high_text):
                self._invalid(item, position)
        elif used != len(low_text):
            self._invalid(item, position)
        else:
            high = low
        if low > high:
            self.fail(f"reversed range {quote(item)} at position {position}")
        if high - low >= MAX_RANGE:
            self.fail(f"range {quote(item)} at position {position} has more than {MAX_RANGE} hosts")
        return low, high, len(low_text)

    def _invalid(self, item: str, position: int) -> NoReturn:
        """Refuse the range ``item`` found at ``position``."""
        self.fail(f"invalid range {quote(item)} at position {position}")

    def _strtoul(self, text: str, position: int) -> tuple[int, int]:
        """C ``strtoul(text, &end, 10)``: the value and how many characters it used (0: none)."""
        if text.isdigit() and text.isascii():
            start, end, negative = 0, len(text), False
        else:
            start = len(text) - len(text.lstrip(_BLANKS))
            negative = text.startswith("-", start)
            if text.startswith(("+", "-"), start):
                start += 1
            end = start
            while end < len(text) and text[end] in _DIGITS:
                end += 1
            if end == start:
                return 0, 0
        digits = text[start:end].lstrip("0") or "0"
        if len(digits) > len(str(_ULONG_MAX)) or int(digits) > _ULONG_MAX:
            self.fail(f"number {quote(text[start:end])} at position {position} exceeds 2**64-1")
        value = int(digits)
        return (-value) % 2**64 if negative else value, end


def _expand_pattern(pattern: _Pattern) -> list[str]:
    """The hosts of one bracketed name, in SLURM's order."""
    if not pattern.groups:
        return _numbers(pattern.ranges, pattern.head, pattern.suffix)
    numbers = _numbers(pattern.ranges, "", pattern.suffix)
    columns = [_numbers(group, "", tail) for group, tail in reversed(pattern.groups)]
    hosts: list[str] = []
    for parts in product(*columns):
        hosts.extend(map((pattern.head + "".join(reversed(parts))).__add__, numbers))
    return hosts


def expand(expression: str, variable: str = "hostlist") -> list[str]:
    """The hosts of a SLURM hostlist ``expression``, in order, duplicates kept.

    ``variable`` names the expression's source in error messages.
    Raises HostlistError when the expression is malformed or over the limits.
    """
    hosts: list[str] = []
    for name in _Parser(expression, variable).names:
        if isinstance(name, str):
            hosts.append(name)
        else:
            hosts.extend(_expand_pattern(name))
    return hosts


def count(expression: str, variable: str = "hostlist") -> int:
    """``len(expand(expression, variable))``, with the same checks, without building the list."""
    return _Parser(expression, variable).hosts


def compress(hosts: Iterable[str]) -> str:
    """A hostlist expression that expands to exactly ``hosts``, in the same order.

    Runs of consecutive numbers with the same prefix and compatible padding become ranges
    (at most MAX_RANGE hosts each), neighbouring ranges with the same prefix share brackets;
    nothing is sorted or deduplicated. Text after the last digits is never bracketed, so the
    result also parses in SLURM releases before 23.02.5. Raises HostlistError for a name that
    cannot appear in an expression (empty, or holding a separator, bracket or control character).
    """
    if isinstance(hosts, str):
        raise HostlistError(f"hosts={quote(hosts)}: expected host names, not one string")
    runs: list[str | _Run] = []
    for index, host in enumerate(hosts):
        if not isinstance(host, str):
            raise HostlistError(f"hosts[{index}]: expected a string, got {type(host).__name__}")
        if not host or _UNUSABLE.search(host):
            raise HostlistError(f"hosts[{index}]={quote(host)}: not usable in a hostlist")
        stem = host.rstrip(_DIGITS)
        digits = host[len(stem) :]
        significant = digits.lstrip("0") or "0"
        if not digits or len(significant) > len(str(_ULONG_MAX)) or int(significant) > _ULONG_MAX:
            runs.append(host)
            continue
        number = int(significant)
        last = runs[-1] if runs else None
        if (
            isinstance(last, _Run)
            and last.prefix == stem
            and last.high + 1 == number
            and number - last.low < MAX_RANGE
            and f"{number:0{last.width}d}" == digits
        ):
            last.high = number
        else:
            runs.append(_Run(stem, number, number, len(digits)))
    parts: list[str] = []
    index = 0
    while index < len(runs):
        run = runs[index]
        index += 1
        if isinstance(run, str):
            parts.append(run)
            continue
        group = [run]
        while index < len(runs) and isinstance(runs[index], _Run):
            following = runs[index]
            if following.prefix != run.prefix:
                break
            group.append(following)
            index += 1
        numbers = ",".join(item.text() for item in group)
        single = len(group) == 1 and run.low == run.high
        parts.append(run.prefix + (numbers if single else f"[{numbers}]"))
    return ",".join(parts)
