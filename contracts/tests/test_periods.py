from datetime import UTC, date, datetime, timedelta

import pytest

from contracts.periods import TOKYO, FiscalQuarter, fiscal_year_end, fiscal_year_of, quarters_between


@pytest.mark.parametrize(
    ("day", "label"),
    [
        (date(2024, 4, 1), "FY2024Q1"),
        (date(2024, 6, 30), "FY2024Q1"),
        (date(2024, 7, 1), "FY2024Q2"),
        (date(2024, 12, 31), "FY2024Q3"),
        (date(2025, 1, 1), "FY2024Q4"),
        (date(2025, 3, 31), "FY2024Q4"),
        (date(2025, 4, 1), "FY2025Q1"),
    ],
)
def test_quarter_of_date(day: date, label: str) -> None:
    assert FiscalQuarter.of_date(day).label == label


def test_bounds_and_navigation() -> None:
    q4 = FiscalQuarter(2024, 4)
    assert (q4.start, q4.end) == (date(2025, 1, 1), date(2025, 3, 31))
    assert q4.next() == FiscalQuarter(2025, 1)
    assert FiscalQuarter(2025, 1).previous() == q4
    assert FiscalQuarter.parse("FY2024Q3") == FiscalQuarter(2024, 3)
    assert fiscal_year_end(2024) == date(2025, 3, 31)
    assert fiscal_year_of(date(2025, 3, 31)) == 2024
    assert len(quarters_between(FiscalQuarter(2024, 1), FiscalQuarter(2025, 4))) == 8


def test_moments_are_placed_in_tokyo() -> None:
    # 2025-03-31T15:00Z is 2025-04-01 00:00 in Tokyo: the new fiscal year.
    assert FiscalQuarter.of_moment(datetime(2025, 3, 31, 15, 0, tzinfo=UTC)) == FiscalQuarter(2025, 1)
    assert FiscalQuarter.of_moment(datetime(2025, 3, 31, 14, 59, tzinfo=UTC)) == FiscalQuarter(2024, 4)
    with pytest.raises(ValueError, match="UTC offset"):
        FiscalQuarter.of_moment(datetime(2025, 3, 31))


def test_on_time_boundary() -> None:
    q = FiscalQuarter(2024, 1)  # ends 2024-06-30; on time through 2024-07-30 (JST)
    assert q.is_on_time(datetime(2024, 7, 30, 23, 59, tzinfo=TOKYO))
    assert q.is_on_time(datetime(2024, 7, 31, 0, 0, tzinfo=TOKYO))
    assert not q.is_on_time(datetime(2024, 7, 31, 0, 0, tzinfo=TOKYO) + timedelta(seconds=1))


def test_started() -> None:
    q = FiscalQuarter(2025, 1)
    assert not q.has_started(datetime(2025, 3, 31, 23, 59, tzinfo=TOKYO))
    assert q.has_started(datetime(2025, 4, 1, 0, 0, tzinfo=TOKYO))


@pytest.mark.parametrize("bad", ["2024Q3", "FY2024Q5", "FY24Q1", ""])
def test_bad_labels(bad: str) -> None:
    with pytest.raises(ValueError, match="label"):
        FiscalQuarter.parse(bad)


def test_quarter_range_checked() -> None:
    with pytest.raises(ValueError, match="quarter"):
        FiscalQuarter(2024, 0)
