"""Japanese fiscal periods (binding): FY N runs from N-04-01 to (N+1)-03-31, dates in Asia/Tokyo."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

TOKYO = ZoneInfo("Asia/Tokyo")

#: A report is on time when it arrives no later than this long after the quarter ends.
ON_TIME_GRACE = timedelta(days=30)

_LABEL = re.compile(r"^FY(\d{4})Q([1-4])$")


def fiscal_year_of(day: date) -> int:
    """The fiscal year a calendar date falls in (April start)."""
    return day.year if day.month >= 4 else day.year - 1


def fiscal_year_end(fiscal_year: int) -> date:
    """The last day of a fiscal year: 2024年度末 is 2025-03-31."""
    return date(fiscal_year + 1, 3, 31)


def tokyo_date(moment: datetime) -> date:
    """The calendar date of an aware moment in Asia/Tokyo."""
    if moment.tzinfo is None:
        raise ValueError("a moment needs a UTC offset to be placed in Asia/Tokyo")
    return moment.astimezone(TOKYO).date()


@dataclass(frozen=True, order=True, slots=True)
class FiscalQuarter:
    """One quarter of a Japanese fiscal year: Q1 Apr–Jun, Q2 Jul–Sep, Q3 Oct–Dec, Q4 Jan–Mar of FY+1."""

    fiscal_year: int
    quarter: int

    def __post_init__(self) -> None:
        if not 1 <= self.quarter <= 4:
            raise ValueError(f"quarter must be 1–4, not {self.quarter}")
        # Wider than the v1 contract (1900–9998) so that the quarters around any admissible one exist too.
        if not 1000 <= self.fiscal_year <= 9999:
            raise ValueError(f"fiscal year out of range: {self.fiscal_year}")

    @classmethod
    def of_date(cls, day: date) -> FiscalQuarter:
        fy = fiscal_year_of(day)
        return cls(fy, (day.month - 4) % 12 // 3 + 1)

    @classmethod
    def of_moment(cls, moment: datetime) -> FiscalQuarter:
        """The quarter an aware moment falls in, in Asia/Tokyo."""
        return cls.of_date(tokyo_date(moment))

    @classmethod
    def parse(cls, label: str) -> FiscalQuarter:
        """Parse a label such as `FY2024Q3`."""
        m = _LABEL.match(label.strip())
        if not m:
            raise ValueError(f"not a fiscal quarter label (expected like FY2024Q3): {label!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    @property
    def label(self) -> str:
        return f"FY{self.fiscal_year}Q{self.quarter}"

    @property
    def start(self) -> date:
        month = 4 + 3 * (self.quarter - 1)
        year = self.fiscal_year
        if month > 12:
            month -= 12
            year += 1
        return date(year, month, 1)

    @property
    def end(self) -> date:
        return self.next().start - timedelta(days=1)

    @property
    def start_at(self) -> datetime:
        """The first instant of the quarter, Asia/Tokyo."""
        return datetime(self.start.year, self.start.month, self.start.day, tzinfo=TOKYO)

    @property
    def end_at(self) -> datetime:
        """The first instant after the quarter, Asia/Tokyo (exclusive bound)."""
        return self.next().start_at

    @property
    def on_time_deadline(self) -> datetime:
        """Reports at or before this instant are on time: the end of the quarter's last day plus 30 days."""
        return self.end_at + ON_TIME_GRACE

    def next(self) -> FiscalQuarter:
        if self.quarter == 4:
            return FiscalQuarter(self.fiscal_year + 1, 1)
        return FiscalQuarter(self.fiscal_year, self.quarter + 1)

    def previous(self) -> FiscalQuarter:
        if self.quarter == 1:
            return FiscalQuarter(self.fiscal_year - 1, 4)
        return FiscalQuarter(self.fiscal_year, self.quarter - 1)

    def has_started(self, moment: datetime) -> bool:
        """Whether the quarter had begun at an aware moment (Asia/Tokyo)."""
        return moment >= self.start_at

    def is_on_time(self, reported_at: datetime) -> bool:
        """A report is on time if reported_at ≤ quarter end + 30 days."""
        return reported_at <= self.on_time_deadline

    def __str__(self) -> str:
        return self.label


def quarters_between(first: FiscalQuarter, last: FiscalQuarter) -> list[FiscalQuarter]:
    """Every quarter from first to last inclusive."""
    out: list[FiscalQuarter] = []
    q = first
    while q <= last:
        out.append(q)
        q = q.next()
    return out


def last_completed_quarter(moment: datetime) -> FiscalQuarter:
    """The most recent quarter that had ended at a moment."""
    return FiscalQuarter.of_moment(moment).previous()
