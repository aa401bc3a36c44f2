"""The registry's pure rules: canonical documents, revisions, change sets, search terms, id spelling."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from catalog.plan import search_key
from contracts.agencies import Agency
from contracts.catalog import SECTION_TITLES, Measure, measure_sort_key

MEASURE_ID_RE = re.compile(r"^[1-6]-\d{1,3}$")
VALID_AGENCIES = ", ".join(a.value for a in Agency)


def measure_document(measure: Measure) -> bytes:
    """The canonical wire form of a measure: the JSON every reader (HTTP, KV, request-reply) gets."""
    return measure.model_dump_json().encode()


def content_hash(document: bytes) -> str:
    return hashlib.sha256(document).hexdigest()


def measure_hash(measure: Measure) -> str:
    return content_hash(measure_document(measure))


def registry_revision(measures: Iterable[Measure]) -> str:
    """Content hash of the whole registry in document order: equal registries, equal revisions."""
    digest = hashlib.sha256()
    for measure in sorted(measures, key=lambda m: measure_sort_key(m.id)):
        digest.update(measure_document(measure))
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class ChangeSet:
    """How a new registry differs from the stored one, by measure id (each in document order)."""

    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    @property
    def changed_ids(self) -> list[str]:
        return sort_ids({*self.added, *self.updated, *self.removed})

    def __bool__(self) -> bool:
        return bool(self.added or self.updated or self.removed)


def sort_ids(ids: Iterable[str]) -> list[str]:
    return sorted(ids, key=measure_sort_key)


def diff_registry(stored: Mapping[str, str], wanted: Mapping[str, str]) -> ChangeSet:
    """Compare `{measure id: content hash}` maps of the stored and the wanted registry."""
    return ChangeSet(
        added=tuple(sort_ids(wanted.keys() - stored.keys())),
        updated=tuple(sort_ids(k for k in wanted.keys() & stored.keys() if wanted[k] != stored[k])),
        removed=tuple(sort_ids(stored.keys() - wanted.keys())),
    )


def check_registry(measures: Sequence[Measure]) -> None:
    """Refuse a registry the catalog could not serve faithfully (duplicate ids, wrong section titles)."""
    seen: set[str] = set()
    for m in measures:
        if m.id in seen:
            raise ValueError(f"measure {m.id} appears twice in the plan")
        seen.add(m.id)
        if m.id.partition("-")[0] != str(m.section):
            raise ValueError(f"measure {m.id} is filed under section {m.section}")
        if SECTION_TITLES.get(m.section) != m.section_title:
            raise ValueError(f"measure {m.id} has section title {m.section_title!r}, not {SECTION_TITLES[m.section]!r}")


def compact_key(key: str) -> str:
    """A search key without any whitespace.

    The plan's text is extracted from a PDF and spaces fall at random around Latin words ("e-Tax の",
    "DFFT の推進"); a Japanese reader types no spaces, so the stored key and every term drop them.
    """
    return "".join(key.split())


def measure_search_key(measure: Measure) -> str:
    """What `q` searches: title, bullets and targets, each as a compact search key, one per line.

    Lines keep the fields apart, so a term never matches across the end of one and the start of the next.
    """
    fields = [measure.title, *measure.description, *(t.text for t in measure.targets)]
    return "\n".join(compact_key(search_key(f)) for f in fields)


def query_terms(q: str | None) -> list[str]:
    """The AND-ed terms of a search query: split on any whitespace (full-width too), normalised, deduplicated."""
    if not q:
        return []
    terms: list[str] = []
    for raw in unicodedata.normalize("NFKC", q).split():
        term = compact_key(search_key(raw))
        if term and term not in terms:
            terms.append(term)
    return terms


def normalise_measure_id(raw: str) -> str | None:
    """`1-25` as users may type it (`１－２５`, ` 1-25 `, `No.1-25`), or None when it cannot be a measure id."""
    text = unicodedata.normalize("NFKC", raw).strip()
    text = text.replace("‐", "-").replace("−", "-").replace("ー", "-")
    if text[:3].casefold() == "no.":
        text = text[3:].strip()
    if not MEASURE_ID_RE.match(text):
        return None
    section, _, number = text.partition("-")
    return f"{section}-{int(number)}"  # `1-025` is 1-25


def parse_agency(raw: str) -> Agency:
    """An agency code (case and surrounding spaces forgiven); ValueError naming the valid codes otherwise."""
    code = raw.strip().lower()
    try:
        return Agency(code)
    except ValueError:
        raise ValueError(f"unknown agency {raw!r}: use one of {VALID_AGENCIES}") from None


def check_section(section: int) -> int:
    if section not in SECTION_TITLES:
        raise ValueError(f"unknown section {section}: sections are numbered 1 to 6")
    return section
