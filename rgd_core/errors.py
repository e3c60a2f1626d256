"""Exceptions a user can act on. Each message says what to do; CLI and nodes show it without a traceback."""


class RGDError(Exception):
    """Base class of every error rgd raises on purpose."""


class RGDInputError(RGDError, ValueError):
    """Bad input: a setting, a file or a data set that cannot be used as given."""


class NonFiniteError(RGDError, FloatingPointError):
    """A loss or gradient became NaN or infinite; the run stops before the step is applied."""


class UnlearningCancelled(RGDError):
    """The caller asked the run to stop; the model passed in is untouched unless training was in place."""
