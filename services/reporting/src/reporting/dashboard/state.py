"""The state of a dashboard view: it lives in the URL, so that a view can be shared."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal
from urllib.parse import urlencode

from contracts.periods import FiscalQuarter
from reporting.dashboard.i18n import Lang, is_agency

ViewMode = Literal["now", "published"]

#: The first fiscal year a picker offers: the plan was adopted on 2024-06-21.
FIRST_FISCAL_YEAR = 2024


class BadState(ValueError):
    """A dashboard URL that names no valid view (bad year, quarter, agency, section, timestamp)."""


@dataclass(frozen=True)
class ViewState:
    """Everything a dashboard view depends on; it lives in the URL so that a view can be shared."""

    quarter: FiscalQuarter | None = None
    agency: str | None = None
    section: int | None = None
    mode: ViewMode = "now"
    as_of: datetime | None = None
    lang: Lang = "ja"

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> ViewState:
        """Parse `fy`, `q`, `agency`, `section`, `view`, `as_of`, `lang`; raise BadState with a message."""
        fy_text, q_text = query.get("fy", "").strip(), query.get("q", "").strip()
        quarter: FiscalQuarter | None = None
        if fy_text or q_text:
            try:
                fy = int(fy_text)
                q = int(q_text) if q_text else 1
                quarter = FiscalQuarter(fy, q)
            except ValueError as e:
                raise BadState(f"fy and q must name a fiscal quarter (fy=2024, q=1–4): {e}") from None
        agency = query.get("agency", "").strip() or None
        if agency is not None and not is_agency(agency):
            raise BadState(f"unknown agency code: {agency!r}")
        section_text = query.get("section", "").strip()
        section: int | None = None
        if section_text:
            if section_text not in {"1", "2", "3", "4", "5", "6"}:
                raise BadState(f"section must be 1–6, not {section_text!r}")
            section = int(section_text)
        mode_text = query.get("view", "").strip()
        if mode_text not in ("", "now", "published", "as_of"):
            raise BadState(f"view must be 'now', 'published' or 'as_of', not {mode_text!r}")
        mode: ViewMode = "published" if mode_text == "published" else "now"
        as_of: datetime | None = None
        as_of_text = query.get("as_of", "").strip()
        # An explicit moment counts unless the user picked one of the two named views instead.
        if as_of_text and mode_text in ("", "as_of"):
            try:
                as_of = datetime.fromisoformat(as_of_text.replace("Z", "+00:00").replace(" ", "+"))
            except ValueError:
                raise BadState(f"as_of must be an ISO 8601 timestamp with offset, not {as_of_text!r}") from None
            if as_of.tzinfo is None:
                raise BadState("as_of needs a UTC offset (e.g. 2025-01-30T00:00:00+09:00)")
        lang: Lang = "en" if query.get("lang", "ja") == "en" else "ja"
        return cls(quarter=quarter, agency=agency, section=section, mode=mode, as_of=as_of, lang=lang)

    def query(self, **changes: object) -> str:
        """This state (with changes) as a query string, defaults left out; '' when nothing differs."""
        state = replace(self, **changes)  # type: ignore[arg-type]
        params: list[tuple[str, str]] = []
        if state.quarter is not None:
            params += [("fy", str(state.quarter.fiscal_year)), ("q", str(state.quarter.quarter))]
        if state.agency:
            params.append(("agency", state.agency))
        if state.section is not None:
            params.append(("section", str(state.section)))
        if state.mode != "now" and state.as_of is None:
            params.append(("view", state.mode))
        if state.as_of is not None:
            params.append(("as_of", state.as_of.isoformat()))
        if state.lang != "ja":
            params.append(("lang", state.lang))
        return "?" + urlencode(params) if params else ""

    def api_filters(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.agency:
            out["agency"] = self.agency
        if self.section is not None:
            out["section"] = str(self.section)
        return out


def fiscal_years(now: datetime) -> list[int]:
    """The years the picker offers: from the plan's first fiscal year to the current one."""
    current = FiscalQuarter.of_moment(now).fiscal_year
    return list(range(FIRST_FISCAL_YEAR, max(current, FIRST_FISCAL_YEAR) + 1))
