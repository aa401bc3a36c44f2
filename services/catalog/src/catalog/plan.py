"""The plan importer: デジタル社会の実現に向けた重点計画 as catalog measures (pure functions over text).

The document is text extracted from a PDF table. Every physical line is followed by a blank line;
text wraps at a fixed width (about 68 full-width columns after the hanging indent); a page number
(``41``) can stand alone on a line anywhere, even inside a measure; a line that ends a paragraph
keeps a trailing space, a line the layout wrapped does not.

Targets (具体的な目標) are the physical lines from ``具体的な目標：`` to ``主担当省庁：``, split into
records. A line continues the target before it when, checked in this order:

1. the block numbers its targets with ①②…: only a numbered line starts a target;
2. the target so far has an unclosed bracket, or a bare ``（参考）`` label (reference figures follow);
3. the line opens with ``（`` or ``※`` (a qualifier or a note on what precedes);
4. otherwise a line ending in ``。`` ends the target;
5. the line opens with kana or closing punctuation (no target starts mid-word), or the previous
   line ends with ``、`` / ``：``, is a bare ``＜heading＞`` or a bare date (``達成時期:2027年度末``),
   or the line is only a value (``786件、…``, ``2025年度：100%``);
6. the previous line is full width and has no trailing space (the layout wrapped it).

A line ``―`` means the measure has no target. Lines are joined without a separator, except that a
trailing space the document wrote between two ASCII words or numbers is kept (``Project LINKS``).

What each target's text states (deadline, value, baseline, direction, milestones) is read by
`catalog.targets.parse_target`, re-exported here.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources

from catalog.target_dates import plain as _plain
from catalog.targets import parse_target
from contracts.agencies import Agency, agency_from_japanese
from contracts.catalog import SECTION_TITLES, Measure

__all__ = ["PlanFormatError", "bundled_plan_text", "parse_plan", "parse_target", "search_key"]

PLAN_FILE = "priority-policy-program-measures.txt"

# Content width (East Asian wide = 2) from which a line without trailing space counts as wrapped;
# the widest lines are 68, and lines that end a target stay below 64 or keep a trailing space.
_WRAP_WIDTH = 64

_SECTION = re.compile(r"^([0-9０-９])．\s*(\S.*)$")
_MEASURE = re.compile(r"^○\s*\[No\.(\d+)-(\d+)\]\s*(.*)$")
_TARGETS = re.compile(r"^具体的な目標\s*[：:]\s*")
_LEADS = re.compile(r"^主担当省庁\s*[：:]\s*")
_PAGE_NUMBER = re.compile(r"^\d{1,3}$")
_BULLET = "・"
_NO_TARGET = frozenset("―—─－-‐")
_LEAD_SEPARATOR = re.compile(r"[、，,]")

_ENUMERATOR = re.compile(r"^[①-⑳]")
_REFERENCE_LABEL = re.compile(r"^[（(]参考[^）)\d０-９]*[）)]$")
_QUALIFIER_OPENERS = ("（", "(", "※")
_CONTINUATION_START = re.compile(r"^[\u3041-\u309fァィゥェォッャュョヮヵヶー、。，．）)」』】＞］\]]")
_INCOMPLETE_ENDS = ("、", "，", "：", ":")
_HEADING = re.compile(r"^[＜<【][^＞>】]+[＞>】]$")
_BRACKETS = {"（": "）", "(": ")", "「": "」", "『": "』", "＜": "＞", "【": "】", "［": "］", "[": "]"}

_BARE_DATE = re.compile(r"(?:[^:：、。]{1,10}[:：]\s*)?(?:19|20)\d{2}\s*年度?(?:末|中|内)?(?:\d{1,2}月)?[、,]?")
_VALUE_LINE = re.compile(r"^(?:(?:19|20)\d{2}年度?(?:末|中)?\s*[:：]\s*)?約?\d[\d,.]*(?![\d,.]|\s*年)")


class PlanFormatError(ValueError):
    """The plan's text has a structure the importer does not understand."""

    def __init__(self, line_no: int, message: str) -> None:
        super().__init__(f"line {line_no}: {message}")
        self.line_no = line_no
        self.message = message


@dataclass(frozen=True, slots=True)
class _Line:
    """A non-blank physical line: its number, its stripped text, and whether a space trailed it."""

    number: int
    text: str
    spaced: bool = False


@dataclass(slots=True)
class _Parts:
    """A measure's lines sorted into its four parts."""

    title: list[_Line]
    description: list[list[_Line]] = field(default_factory=list)
    targets: list[_Line] = field(default_factory=list)
    leads: list[_Line] = field(default_factory=list)


def bundled_plan_text() -> str:
    """The plan document shipped with the catalog package."""
    return resources.files("catalog").joinpath("data").joinpath(PLAN_FILE).read_text(encoding="utf-8")


def search_key(text: str) -> str:
    """The form of a text used for searching: NFKC, casefolded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def parse_plan(text: str) -> list[Measure]:
    """All measures of the plan in document order; raises PlanFormatError on unknown structure."""
    measures: list[Measure] = []
    section: tuple[int, str] | None = None
    chunk: list[_Line] = []
    for line in _content_lines(text):
        heading = _SECTION.match(line.text)
        starts_measure = _MEASURE.match(line.text) is not None
        if (heading or starts_measure) and chunk:
            measures.append(_measure(section, chunk, measures[-1] if measures else None))
            chunk = []
        if heading:
            section = _section(heading, line, section)
        elif chunk or starts_measure:
            chunk.append(line)
        else:
            raise PlanFormatError(line.number, f"text outside any measure: {line.text[:40]!r}")
    if chunk:
        measures.append(_measure(section, chunk, measures[-1] if measures else None))
    if not measures:
        raise PlanFormatError(1, "no measure ○[No.S-N] found")
    return measures


def _content_lines(text: str) -> list[_Line]:
    """The document's non-blank lines without page numbers and form feeds."""
    lines: list[_Line] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        physical = raw.replace("\f", "").rstrip("\r")
        content = physical.strip()
        if content and not _PAGE_NUMBER.fullmatch(content):
            lines.append(_Line(number, content, physical != physical.rstrip()))
    return lines


def _section(heading: re.Match[str], line: _Line, previous: tuple[int, str] | None) -> tuple[int, str]:
    """The section a heading line opens, checked against the sequence and the binding titles."""
    number = int(unicodedata.normalize("NFKC", heading.group(1)))
    expected = previous[0] + 1 if previous else 1
    if number != expected:
        raise PlanFormatError(line.number, f"section {number} where section {expected} was expected")
    title = heading.group(2).strip()
    if search_key(title) != search_key(SECTION_TITLES.get(number, "")):
        raise PlanFormatError(line.number, f"section {number} is titled {title!r}, not {SECTION_TITLES.get(number)!r}")
    return number, title


def _measure(section: tuple[int, str] | None, lines: list[_Line], previous: Measure | None) -> Measure:
    """One measure from its lines, the header ○[No.S-N] first."""
    head = lines[0]
    header = _MEASURE.match(head.text)
    if header is None or section is None:
        raise PlanFormatError(head.number, "a measure must start with ○[No.S-N] inside a section")
    section_number, number = int(header.group(1)), int(header.group(2))
    expected = previous.id.partition("-")[2] if previous and previous.section == section_number else "0"
    if section_number != section[0] or number != int(expected) + 1:
        raise PlanFormatError(head.number, f"measure No.{section_number}-{number} out of sequence")
    parts = _parts(_Line(head.number, header.group(3), head.spaced), lines[1:])
    return Measure(
        id=f"{section_number}-{number}",
        section=section_number,
        section_title=section[1],
        title=_join(parts.title),
        description=[_join(bullet) for bullet in parts.description if bullet],
        lead_agencies=_lead_agencies(parts.leads),
        targets=[parse_target(index, text) for index, text in enumerate(_target_texts(parts.targets))],
    )


def _parts(title: _Line, lines: Sequence[_Line]) -> _Parts:
    """Sort a measure's lines into title, bullets, targets and leads, in that order."""
    parts = _Parts(title=[title])
    stage = "title"
    for line in lines:
        if _TARGETS.match(line.text):
            if stage not in ("title", "description"):
                raise PlanFormatError(line.number, "a second 具体的な目標 in one measure")
            stage = "targets"
            parts.targets.append(_Line(line.number, _TARGETS.sub("", line.text), line.spaced))
        elif _LEADS.match(line.text):
            if stage != "targets":
                raise PlanFormatError(line.number, "主担当省庁 before 具体的な目標")
            stage = "leads"
            parts.leads.append(_Line(line.number, _LEADS.sub("", line.text), line.spaced))
        elif stage in ("title", "description") and line.text.startswith(_BULLET):
            stage = "description"
            parts.description.append([_Line(line.number, line.text[1:].strip(), line.spaced)])
        elif stage == "description":
            parts.description[-1].append(line)
        else:
            {"title": parts.title, "targets": parts.targets, "leads": parts.leads}[stage].append(line)
    if stage != "leads":
        raise PlanFormatError(lines[-1].number if lines else title.number, "measure without 主担当省庁")
    return parts


def _lead_agencies(lines: list[_Line]) -> list[Agency]:
    """The lead agencies in document order; the list may wrap onto following lines."""
    names = [name.strip() for name in _LEAD_SEPARATOR.split(_join(lines)) if name.strip()]
    if not names:
        raise PlanFormatError(lines[0].number, "主担当省庁 names no agency")
    try:
        return [agency_from_japanese(name) for name in names]
    except KeyError as error:
        raise PlanFormatError(lines[0].number, str(error)) from error


def _target_texts(lines: list[_Line]) -> list[str]:
    """The texts of the separate targets in a 具体的な目標 block (rules in the module docstring)."""
    pieces = [line for line in lines if line.text]
    if not pieces or pieces[0].text in _NO_TARGET:
        return []
    enumerated = any(_ENUMERATOR.match(piece.text) for piece in pieces)
    groups: list[list[_Line]] = []
    for piece in pieces:
        if groups and _continues(groups[-1], piece, enumerated=enumerated):
            groups[-1].append(piece)
        else:
            groups.append([piece])
    return [_join(group) for group in groups]


def _continues(group: list[_Line], piece: _Line, *, enumerated: bool) -> bool:
    """Whether a line continues the target whose lines are `group`."""
    if enumerated:
        return not _ENUMERATOR.match(piece.text)
    last = group[-1]
    if _has_open_bracket(_join(group)) or any(_REFERENCE_LABEL.fullmatch(line.text) for line in group):
        return True
    if piece.text.startswith(_QUALIFIER_OPENERS):
        return True
    if last.text.endswith("。"):
        return False
    return (
        _CONTINUATION_START.match(piece.text) is not None
        or last.text.endswith(_INCOMPLETE_ENDS)
        or _HEADING.fullmatch(last.text) is not None
        or _BARE_DATE.fullmatch(_plain(last.text)) is not None
        or _VALUE_LINE.match(_plain(piece.text)) is not None
        or (_width(last.text) >= _WRAP_WIDTH and not last.spaced)
    )


def _has_open_bracket(text: str) -> bool:
    """Whether a bracket opened in the text is still open at its end."""
    closers: list[str] = []
    for char in text:
        if char in _BRACKETS:
            closers.append(_BRACKETS[char])
        elif closers and char == closers[-1]:
            closers.pop()
    return bool(closers)


def _join(lines: Sequence[_Line]) -> str:
    """Wrapped lines as one string; a trailing space survives only between ASCII words or numbers."""
    lines = [line for line in lines if line.text]
    if not lines:
        return ""
    text = lines[0].text
    for previous, line in itertools.pairwise(lines):
        ascii_junction = _is_ascii_alnum(previous.text[-1]) or _is_ascii_alnum(line.text[0])
        text += (" " if previous.spaced and ascii_junction else "") + line.text
    return text


def _is_ascii_alnum(char: str) -> bool:
    return char.isascii() and char.isalnum()


def _width(text: str) -> int:
    """Display width in half-width columns, as the layout wrapped it."""
    return sum(2 if unicodedata.east_asian_width(char) in "WFA" else 1 for char in text)
