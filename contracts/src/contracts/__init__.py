"""Shared contracts of Shinchoku. Depends on pydantic only."""

from contracts.agencies import AGENCIES, AGENCY_INFO, Agency, AgencyInfo, agency_from_japanese
from contracts.catalog import SECTION_TITLES, Measure, Section, Target, measure_sort_key
from contracts.events import (
    REASON_PRECEDENCE,
    SEVERITY_ORDER,
    UNREPORTED,
    AdmittedEvent,
    CatalogChanged,
    KpiObservation,
    ReasonCode,
    Rejection,
    Status,
    StatusEvent,
)
from contracts.periods import TOKYO, FiscalQuarter, fiscal_year_end, fiscal_year_of

__all__ = [
    "AGENCIES",
    "AGENCY_INFO",
    "REASON_PRECEDENCE",
    "SECTION_TITLES",
    "SEVERITY_ORDER",
    "TOKYO",
    "UNREPORTED",
    "AdmittedEvent",
    "Agency",
    "AgencyInfo",
    "CatalogChanged",
    "FiscalQuarter",
    "KpiObservation",
    "Measure",
    "ReasonCode",
    "Rejection",
    "Section",
    "Status",
    "StatusEvent",
    "Target",
    "agency_from_japanese",
    "fiscal_year_end",
    "fiscal_year_of",
    "measure_sort_key",
]
