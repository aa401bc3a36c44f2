"""The rebuild's writers each keep the winners of their share of the stream; merged, they are the winners of all."""

from __future__ import annotations

import random

from contracts.periods import FiscalQuarter
from reporting.bulkwrite import EffectiveReports
from reporting.handlers import decode_admitted
from reporting.testing import random_admissions, synthetic_measures


def test_winners_of_shares_merged_equal_the_winners_of_the_whole_stream() -> None:
    measures = synthetic_measures(40)
    quarters = [FiscalQuarter(2024, 4), FiscalQuarter(2025, 1)]
    admitted = [decode_admitted(a.body()) for a in random_admissions(measures, quarters, 3000, seed=5)]
    admitted += admitted[:200]  # redelivered copies land in any share
    whole = EffectiveReports()
    whole.add(admitted)
    expected = sorted(whole.rows())
    assert len(expected) < 1000  # many corrections per (quarter, measure, agency): the ordering matters

    rnd = random.Random(3)
    for writers in (2, 3):
        for _ in range(5):
            shares = [EffectiveReports() for _ in range(writers)]
            batches = [admitted[i : i + 97] for i in range(0, len(admitted), 97)]
            for batch in batches:
                rnd.choice(shares).add(batch)
            merged = EffectiveReports()
            for share in rnd.sample(shares, len(shares)):
                merged.merge(share.ranked())
            assert sorted(merged.rows()) == expected
