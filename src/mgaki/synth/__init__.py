"""Synthetic inpatient cohorts with planted ground truth (issue 3): tables, truth, raw form.

``generate(n, seed)`` returns canonical tables (``mgaki.events.schema.TABLES``)
and a truth table of what was planted (AKI stage, onset and mechanism,
hypomagnesemia, monitoring gaps, ...); ``to_raw`` turns them into the raw
adapter form, in a realistic mix of units with a few dirty rows, so the whole
ingest path can be tested against known answers. See docs/synthetic.md.
"""

from mgaki.synth._generate import Cohort, generate
from mgaki.synth._params import SynthParams, load_params
from mgaki.synth._raw import DIRTY_KINDS, to_raw

__all__ = ["DIRTY_KINDS", "Cohort", "SynthParams", "generate", "load_params", "to_raw"]
