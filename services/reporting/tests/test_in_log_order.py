"""`workers.InLogOrder`: the writer's side of the consumer's two batches in flight."""

from __future__ import annotations

from collections.abc import Sequence

from reporting.handlers import NOT_ATTEMPTED, BatchOutcome, Delivered
from reporting.workers import InLogOrder


class Store:
    """Writes batches (the first `failures` fail) and says which were written."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.written: list[int] = []

    def __call__(self, messages: Sequence[Delivered]) -> BatchOutcome:
        first = messages[0][1]
        if self.failures:
            self.failures -= 1
            return BatchOutcome([], "OperationalError: database is locked")
        self.written.append(first)
        return BatchOutcome([])


def batch(seq: int) -> list[Delivered]:
    return [("accepted.x", seq, b"{}")]


def test_batches_behind_a_failed_one_are_not_attempted_until_it_comes_back() -> None:
    store = Store(failures=2)
    write = InLogOrder(store)
    assert write((batch(1), False)).error == "OperationalError: database is locked"
    assert write((batch(2), False)).error == NOT_ATTEMPTED  # sent behind 1 before its failure was known
    assert write((batch(1), True)).error == "OperationalError: database is locked"  # retried, failed again
    assert write((batch(3), False)).error == NOT_ATTEMPTED  # still behind it
    assert store.written == []
    assert write((batch(1), True)).error is None
    # The consumer sends the ones behind again, in order, only now that 1 is committed.
    assert write((batch(2), True)).error is None
    assert write((batch(3), True)).error is None
    assert write((batch(4), False)).error is None
    assert store.written == [1, 2, 3, 4]


def test_without_a_failure_every_batch_is_written_in_the_order_sent() -> None:
    store = Store(failures=0)
    write = InLogOrder(store)
    for seq in (1, 2, 3):
        assert write((batch(seq), False)).error is None
    assert store.written == [1, 2, 3]
