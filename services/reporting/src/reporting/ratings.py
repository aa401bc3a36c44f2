"""KPI ratings over plain values: progress from a target's baseline, in its direction, against the time elapsed.

Nothing here does I/O. It reads the targets as the catalog parses them (DESIGN.md "HTTP": `baseline`,
`direction`, `value_is_change`, `milestones`) and rates observations with Japan's A/B/N vocabulary:

- *progress* is the share of the way from the start to the target value: from the baseline when the plan
  states one the target moves from (3-14: (36 − 35.4) / (45.4 − 35.4) = 6 %, not 36 / 45.4 = 79 %), in
  either direction; the change achieved over the change targeted for a change (２割削減, ２倍); else, as
  before, the observed value over the target value (counting up from zero);
- *elapsed share* is the time from the start (the baseline's date when progress is measured from it, else
  the plan's adoption on 2024-06-21) to the observation, over the time from the start to the due date;
- `A` when the target's value is met, or progress ≥ elapsed share; `B` when below; `N` when it cannot be
  rated (no observation, no value, no date, or a decrease with no starting point that is not yet met);
- each milestone is rated the same way on its own value and date;
- a target is *overdue* when its due date has passed and it is not met: its value not reached (a target whose
  value is met is not overdue even if the measure is not `completed`), or, for a target without a value, the
  measure not `completed`;
- an observation's `as_of` after its report's `reported_at` (Asia/Tokyo) counts as of the report's day, both
  to rank observations and to rate them: a typo of 2099 does not outrank every later observation.

The functions are drop-ins for `reporting.domain`'s `rate_kpi`, `target_standings` and the observation order:
they take its `Observation` and `MeasureProgress` (any object with the same attributes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Generic, Literal, Protocol, TypeVar

from contracts.catalog import PLAN_ADOPTED, Baseline, Measure, Milestone, Target
from contracts.events import Status
from contracts.periods import tokyo_date

Rating = Literal["A", "B", "N"]


class Observed(Protocol):
    """An observed value of a target, as `reporting.domain.Observation` carries it."""

    @property
    def value(self) -> float: ...

    @property
    def as_of(self) -> date: ...

    @property
    def reported_at(self) -> datetime: ...

    @property
    def event_id(self) -> str: ...


ObservationT = TypeVar("ObservationT", bound=Observed)
_ObservedCo = TypeVar("_ObservedCo", bound=Observed, covariant=True)


class Progress(Protocol[_ObservedCo]):
    """What is known of a measure across quarters, as `reporting.domain.MeasureProgress` carries it."""

    @property
    def latest_status(self) -> str: ...

    @property
    def observations(self) -> Mapping[int, _ObservedCo]: ...


@dataclass(frozen=True, slots=True)
class KpiRating:
    rating: Rating
    progress: float | None = None
    elapsed_share: float | None = None
    reason: str | None = None
    #: Whether the observed value meets the target's (or milestone's) value; None when there is nothing to meet.
    met: bool | None = None
    #: Where progress and elapsed time are counted from.
    start: date | None = None


@dataclass(frozen=True, slots=True)
class MilestoneStanding:
    milestone: Milestone
    rating: KpiRating
    #: None for a milestone that states no value: only the measure's status could tell, and that speaks for the
    #: whole target.
    overdue: bool | None


@dataclass(frozen=True, slots=True)
class TargetStanding(Generic[ObservationT]):
    target: Target
    overdue: bool
    rating: KpiRating
    observation: ObservationT | None
    milestones: tuple[MilestoneStanding, ...] = ()


# --- observations -------------------------------------------------------------------------------


def effective_as_of(as_of: date, reported_at: datetime) -> date:
    """The day an observation counts as of: its `as_of`, but never after its report's day (Asia/Tokyo)."""
    return min(as_of, tokyo_date(reported_at))


def observation_order(observation: Observed) -> tuple[date, datetime, str]:
    """Greater is later: effective `as_of`, then the later report, then the greater event id."""
    return (
        effective_as_of(observation.as_of, observation.reported_at),
        observation.reported_at,
        observation.event_id,
    )


# --- one target ---------------------------------------------------------------------------------


def elapsed_share(on: date, due: date, *, start: date = PLAN_ADOPTED) -> float:
    """The share of the period from `start` to `due` that had passed on `on`, within [0, 1]."""
    if due <= start:
        return 1.0
    share = (on - start).days / (due - start).days
    return min(1.0, max(0.0, share))


def starting_point(target: Target) -> Baseline | None:
    """The baseline progress is measured from: stated with a direction the target value lies in, same unit."""
    base, value = target.baseline, target.value
    if base is None or value is None or target.direction is None or target.value_is_change:
        return None
    if base.unit is not None and target.unit is not None and base.unit != target.unit:
        return None
    moves = value > base.value if target.direction == "increase" else value < base.value
    return base if moves else None


def period_start(target: Target) -> date:
    """Where elapsed time is counted from: the baseline's date when progress is measured from it or the value
    is a change since it, else the plan's adoption."""
    base = starting_point(target) or (target.baseline if target.value_is_change else None)
    return base.as_of if base is not None and base.as_of is not None else PLAN_ADOPTED


def is_met(target: Target, observed: float) -> bool | None:
    """Whether an observed value meets the target's value (reaches it in the target's direction)."""
    if target.value is None:
        return None
    if target.direction == "decrease" and not target.value_is_change:
        return observed <= target.value
    return observed >= target.value


def kpi_progress(target: Target, observed: float) -> float | None:
    """The share of the way from the start to the target value; None when the plan gives no way to tell."""
    value = target.value
    if value is None:
        return None
    if target.value_is_change:
        return observed / value if value else None
    base = starting_point(target)
    if base is not None:
        return (observed - base.value) / (value - base.value)
    if target.direction == "decrease":
        return None
    return observed / value if value > 0 else None


def rate_kpi(target: Target, observation: Observed | None) -> KpiRating:
    """Rate a target (or a milestone read as one) against its latest observation: A, B or N."""
    if observation is None:
        return KpiRating("N", reason="no observation yet")
    if target.value is None:
        return KpiRating("N", reason="the target states no positive numeric value")
    if target.due_date is None:
        return KpiRating("N", reason="the target states no due date")
    start = period_start(target)
    share = elapsed_share(effective_as_of(observation.as_of, observation.reported_at), target.due_date, start=start)
    met = is_met(target, observation.value)
    progress = kpi_progress(target, observation.value)
    if met:
        return KpiRating("A", progress, share, met=True, start=start)
    if progress is None:
        reason = (
            "a decrease the plan states no starting point for: rated only once its value is met"
            if target.direction == "decrease"
            else "the target states no positive numeric value"
        )
        return KpiRating("N", None, share, reason=reason, met=False, start=start)
    return KpiRating("A" if progress >= share else "B", progress, share, met=False, start=start)


def is_overdue(target: Target, observation: Observed | None, latest_status: str, today: date) -> bool:
    """The due date has passed (strictly before `today`) and the target is not met.

    Met: its value reached by the latest observation, or the measure `completed`; a target without a value is
    met only by the measure being `completed`.
    """
    if target.due_date is None or target.due_date >= today or latest_status == Status.completed:
        return False
    if target.value is None or observation is None:
        return True
    return not is_met(target, observation.value)


def milestone_target(target: Target, milestone: Milestone) -> Target:
    """A milestone read as a target of its own: its value and date, the target's baseline and direction."""
    return target.model_copy(
        update={
            "value": milestone.value,
            "unit": milestone.unit or target.unit,
            "due_date": milestone.due_date,
            "due_approximate": milestone.due_approximate,
            "milestones": [],
        }
    )


def rate_milestones(
    target: Target, observation: Observed | None, latest_status: str, today: date
) -> tuple[MilestoneStanding, ...]:
    """Each milestone rated on its own value and date, with whether it is overdue."""
    out = []
    for milestone in target.milestones:
        if milestone.value is None:
            out.append(MilestoneStanding(milestone, KpiRating("N", reason="the milestone states no value"), None))
            continue
        own = milestone_target(target, milestone)
        out.append(
            MilestoneStanding(milestone, rate_kpi(own, observation), is_overdue(own, observation, latest_status, today))
        )
    return tuple(out)


def target_standings(
    measure: Measure, progress: Progress[ObservationT], today: date
) -> tuple[TargetStanding[ObservationT], ...]:
    """Each target of a measure with its overdue flag, its KPI rating and its milestones' ratings."""
    out = []
    for position, target in enumerate(measure.targets):
        observation = progress.observations.get(position)
        out.append(
            TargetStanding(
                target=target,
                overdue=is_overdue(target, observation, progress.latest_status, today),
                rating=rate_kpi(target, observation),
                observation=observation,
                milestones=rate_milestones(target, observation, progress.latest_status, today),
            )
        )
    return tuple(out)


def latest(observations: Sequence[ObservationT]) -> ObservationT | None:
    """The latest of a target's observations by `observation_order`."""
    return max(observations, key=observation_order, default=None)
