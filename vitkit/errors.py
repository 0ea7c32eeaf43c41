"""Errors vitkit raises for bad input. Each message is one line: the problem, then the fix."""


class VitkitError(Exception):
    """Base class: the CLI prints these as a one-line ``error: ...`` without a traceback."""


class UnsupportedModelError(VitkitError):
    """The host model has a feature vitkit does not handle (named in the message)."""


class ConfigError(VitkitError, ValueError):
    """A config, recipe or argument is invalid (unknown key, out-of-range value, ...)."""


class CheckpointError(VitkitError):
    """A checkpoint file is missing, corrupt, unsafe to unpickle or does not fit the architecture."""


class DataError(VitkitError):
    """A dataset is empty, unknown, or its images do not fit the model."""


class NumericsError(VitkitError):
    """A model holds NaN/Inf values."""


class OrderError(ConfigError):
    """Transforms were requested in an order that cannot work (e.g. quantize before pruning)."""


class DeployError(VitkitError):
    """A model cannot be deployed to the requested runtime (its package is missing, calibration images are
    needed, the runtime rejects the graph)."""


class HardwareError(VitkitError):
    """This machine (or this installation) cannot run the requested precision or runtime fast or at all; the
    message gives the measurement and what to use instead."""
