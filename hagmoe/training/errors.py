"""Typed errors of the training package."""

from __future__ import annotations

from hagmoe.errors import HagMoEError


class DataError(HagMoEError):
    """A corpus cannot be found, fetched, read or split; the message names what and where."""


class ResumeError(HagMoEError):
    """A training checkpoint cannot be found, read or matched to the run being resumed."""
