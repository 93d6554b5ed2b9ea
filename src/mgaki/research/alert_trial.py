"""Deployment modes of alert kinds and the randomised rollout of alerts (issue 17 point 2).

Each alert kind runs in one mode: ``off`` (stored as suppressed, never shown, never evaluated), ``silent``
(stored and evaluated, never shown: a shadow run), ``live`` (shown) or ``randomised`` (the unit's arm decides
``live`` or ``silent``). Units (patients, or care units for a ward-level rollout) are allocated at their first
eligibility: the first alert of a randomised kind. The arm is the next one of the unit's stratum's allocation
list, made of permuted blocks drawn from the seed (``arm_at``): the same seed gives the same list, so an
auditor re-derives every recorded arm from the seed and the order of eligibility (``verify``).

This module is pure (no database): the service keeps the ledger in its database
(``service/persistence/allocation.py``), ``mgaki evaluate`` keeps one in memory for a retrospective
allocation of a stored cohort.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ARMS", "MODES", "AlertPolicy", "Allocation", "AllocationSettings", "Ledger", "MemoryLedger", "Mode",
           "arm_at", "assign_mode", "stratum_of", "verify"]

Mode = Literal["off", "silent", "live", "randomised"]
MODES: tuple[str, ...] = ("off", "silent", "live", "randomised")
ARMS: tuple[str, ...] = ("live", "silent")  # the arms a randomised kind's unit is allocated to


class AllocationSettings(BaseModel):
    """How units are allocated to the live and silent arms (docs/evaluation.md#allocation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    unit: Literal["patient", "ward"] = "patient"  # ward: the care unit at first eligibility (icu | ward)
    seed: int = 20261206
    block_size: int = Field(default=4, ge=2, le=100)  # permuted blocks, a multiple of the number of arms
    stratify_by: tuple[Literal["care_unit", "alert_kind"], ...] = ("care_unit",)
    label: str = "trial-1"  # names one allocation: a new label starts a new allocation list

    @model_validator(mode="after")
    def _blocks(self) -> AllocationSettings:
        if self.block_size % len(ARMS):
            raise ValueError(f"block_size {self.block_size} is not a multiple of the {len(ARMS)} arms")
        return self

    def policy_id(self) -> str:
        """sha256 of the settings that decide the arms: recorded with each allocation."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class AlertPolicy(BaseModel):
    """The mode of each alert kind (``default`` for kinds not named) and the allocation of randomised kinds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    default: Mode = "live"
    modes: dict[str, Mode] = {}
    allocation: AllocationSettings = AllocationSettings()

    def mode(self, kind: str) -> Mode:
        return self.modes.get(kind, self.default)

    def randomised(self) -> bool:
        return self.default == "randomised" or "randomised" in self.modes.values()


def arm_at(settings: AllocationSettings, stratum: str, seq: int) -> str:
    """The arm of the ``seq``-th unit (1, 2, ...) to become eligible in ``stratum``: permuted blocks of
    ``block_size``, each block shuffled by a generator seeded from (seed, label, stratum, block number)."""
    if seq < 1:
        raise ValueError("seq counts from 1")
    block, pos = divmod(seq - 1, settings.block_size)
    key = f"{settings.seed}|{settings.label}|{stratum}|{block}".encode()
    rng = random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))
    arms = list(ARMS) * (settings.block_size // len(ARMS))
    rng.shuffle(arms)
    return arms[pos]


def stratum_of(settings: AllocationSettings, care_unit: str, kind: str) -> str:
    parts = []
    if "care_unit" in settings.stratify_by:
        parts.append(f"care_unit={care_unit}")
    if "alert_kind" in settings.stratify_by:
        parts.append(f"kind={kind}")
    return ";".join(parts) or "all"


@dataclass(frozen=True)
class Allocation:
    unit: str  # patient | ward
    unit_id: str
    stratum: str
    seq: int
    arm: str


class Ledger(Protocol):
    """Where allocations are kept: ``find`` one made already, ``count`` a stratum's, ``add`` a new one."""

    def find(self, unit: str, unit_id: str) -> Allocation | None: ...

    def count(self, stratum: str) -> int: ...

    def add(self, allocation: Allocation) -> None: ...


class MemoryLedger:
    def __init__(self) -> None:
        self.by_unit: dict[tuple[str, str], Allocation] = {}
        self.counts: dict[str, int] = {}

    def find(self, unit: str, unit_id: str) -> Allocation | None:
        return self.by_unit.get((unit, unit_id))

    def count(self, stratum: str) -> int:
        return self.counts.get(stratum, 0)

    def add(self, allocation: Allocation) -> None:
        self.by_unit[(allocation.unit, allocation.unit_id)] = allocation
        self.counts[allocation.stratum] = self.counts.get(allocation.stratum, 0) + 1


def assign_mode(policy: AlertPolicy, ledger: Ledger, subject_id: str, kind: str,
                care_unit: str) -> tuple[str, Allocation | None, bool]:
    """The mode an alert is stored with (off | silent | live), the unit's allocation for a randomised kind, and
    whether that allocation is new (made now, at the unit's first eligibility). Call in time order."""
    mode = policy.mode(kind)
    if mode != "randomised":
        return mode, None, False
    s = policy.allocation
    unit_id = subject_id if s.unit == "patient" else care_unit
    found = ledger.find(s.unit, unit_id)
    if found is not None:
        return found.arm, found, False
    stratum = stratum_of(s, care_unit, kind)
    seq = ledger.count(stratum) + 1
    alloc = Allocation(s.unit, unit_id, stratum, seq, arm_at(s, stratum, seq))
    ledger.add(alloc)
    return alloc.arm, alloc, True


def verify(settings: AllocationSettings, recorded: list[Allocation]) -> list[str]:
    """Problems with recorded allocations: an arm the seed does not give, a gap or repeat in a stratum's order."""
    problems: list[str] = []
    by_stratum: dict[str, list[int]] = {}
    for a in recorded:
        by_stratum.setdefault(a.stratum, []).append(a.seq)
        if a.arm != arm_at(settings, a.stratum, a.seq):
            problems.append(f"{a.unit} {a.unit_id}: arm {a.arm!r} is not the seed's arm for {a.stratum} #{a.seq}")
    for stratum, seqs in by_stratum.items():
        if sorted(seqs) != list(range(1, len(seqs) + 1)):
            problems.append(f"stratum {stratum}: allocation order has gaps or repeats")
    return problems
