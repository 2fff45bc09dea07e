"""Typed errors of the training package."""

from __future__ import annotations

from hagmoe.errors import ConfigError, HagMoEError


class DataError(HagMoEError):
    """A corpus cannot be found, fetched, read or split; the message names what and where."""


class ResumeError(HagMoEError):
    """A training checkpoint cannot be found, read or matched to the run being resumed."""


class InitFromError(ConfigError):
    """`--init-from DIR` cannot work: the folder is not a model, or the training config asks for
    a different shape; the message names the flag, the folder and the keys."""
