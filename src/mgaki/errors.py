"""Exception hierarchy.

    MgakiError
    ├── KnowledgeError          a knowledge file is missing, malformed or uncited
    └── InputError              the caller's data cannot be used as given
        ├── UnitError           unit missing, unknown, or wrong for the analyte
        ├── ImplausibleValueError  value outside what a living patient can have
        ├── TimeError           timestamp missing, unparseable or timezone-naive
        ├── BundleError         FHIR bundle malformed or a resource unusable
        └── OutsideModelError   a (PK) model cannot speak for this patient or regimen

Every InputError names the offending item (``where``) so a clinician or an
interface engineer can find the exact resource; nothing partial is returned.
"""

from __future__ import annotations


class MgakiError(Exception):
    """Base of every error mgaki raises on purpose."""


class KnowledgeError(MgakiError):
    """The knowledge base cannot be loaded or fails validation."""


class ResourceError(MgakiError):
    """The work needs more of a resource (memory, disk) than it was given; the message names the step and the
    setting that gives more."""


class InputError(MgakiError):
    """Input that cannot be used as given; ``where`` names the offending item."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")


class UnitError(InputError):
    """Unit missing, unknown, or not convertible for this analyte."""


class ImplausibleValueError(InputError):
    """A value no living patient can have: a unit slip or a data error."""


class TimeError(InputError):
    """Missing, unparseable or timezone-naive time."""


class BundleError(InputError):
    """Malformed FHIR bundle or unusable resource."""


class OutsideModelError(InputError):
    """The patient or the regimen lies where no encoded model can give a number (e.g. no kidney function)."""
