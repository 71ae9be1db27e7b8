"""User-facing errors: one class per family of mistakes; the CLI prints them in one line and exits non-zero."""


class RobustJpegError(Exception):
    """Base class for every error a user can fix; the message says what is wrong and how to fix it."""


class UnknownName(RobustJpegError, KeyError):
    """A dataset, model, attack or initialisation name that no registry knows."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DatasetNotFound(RobustJpegError):
    """Data files are missing where the loader looked."""


class BadInput(RobustJpegError, ValueError):
    """Tensors or values outside what a stage accepts (range, dtype, shape, NaN, empty)."""


class ConfigError(RobustJpegError, ValueError):
    """A suite, benchmark or model-spec file (or a flag) with a bad or missing field."""


class CheckpointError(RobustJpegError):
    """A checkpoint that cannot be loaded safely or does not fit the architecture."""


class RunFolderError(RobustJpegError):
    """A run folder that is missing files or holds unreadable results."""


class MissingDependency(RobustJpegError, ImportError):
    """An optional library a requested feature needs is not installed; the message gives the install line."""


class FolderLocked(RobustJpegError):
    """Another live process holds the lock of the output folder a command would write into."""


class RobustJpegWarning(UserWarning):
    """Something to act on that does not stop the run (a skipped file, a model that misses its data); one line."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type), for one-line errors that quote a library's."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
