"""Exceptions that users see. Each message names the problem and the fix."""


class KdknobError(Exception):
  """Base class of every error this package raises on purpose."""


class ModelNotFoundError(KdknobError, FileNotFoundError):
  """A model name, directory or hub id that cannot be resolved to local files."""


class UnsupportedModelError(KdknobError, ValueError):
  """A checkpoint whose architecture or options this package does not implement."""


class CheckpointMismatchError(KdknobError, ValueError):
  """A tensor that is missing, unexpected, or shaped differently from the config."""


class TokenizerNotFoundError(KdknobError, FileNotFoundError):
  """A checkpoint that has no tokenizer files."""


class DataError(KdknobError, ValueError):
  """A dataset file, row or field that cannot be used."""


class ConfigError(KdknobError, ValueError):
  """A config value or combination of values that cannot run."""


class RunStateError(KdknobError, RuntimeError):
  """A run directory whose checkpoint cannot be read, or belongs to another configuration."""


class DistributedError(KdknobError, RuntimeError):
  """A multi-process launch environment that is incomplete, malformed, or fails to connect."""


class NonFiniteError(KdknobError, FloatingPointError):
  """A loss, gradient norm or reward that came out NaN or infinite; nothing of it was saved."""


class PreemptedError(KdknobError):
  """The run was asked to stop (SIGTERM/SIGINT) and saved its last completed step; rerunning
  the same command resumes it. Command lines exit with `EXIT_PREEMPTED` for it."""


# sysexits' EX_TEMPFAIL: schedulers and wrappers read it as "try again later".
EXIT_PREEMPTED = 75
