"""Exception types. Every user-facing failure raises one of these with a message naming the fix."""


class IMLEError(Exception):
    """Base class of the errors this package raises on purpose."""


class ConfigError(IMLEError, ValueError):
    """An impossible or inconsistent configuration value."""


class DataError(IMLEError, ValueError):
    """Missing, corrupt, or out-of-range data."""


class ShapeError(IMLEError, ValueError):
    """Tensors whose shapes do not fit together."""


class CheckpointError(IMLEError, RuntimeError):
    """A run folder or checkpoint that cannot be read or resumed."""


class RunFolderBusy(CheckpointError):
    """Another live process is writing the run folder."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped or could not be fully verified; the message names it."""
