"""The one base class of the project's own errors, and the generic kinds of user error.

Every error that reports a user's mistake or a bad file (an option out of range, a missing dataset folder,
a malformed result file, an adapter made for other weights) derives from :class:`PhregError`. The command
line turns exactly these into one-line messages with exit status 2; anything else is a programming error
or an environment failure (CUDA out of memory, a bug) and keeps its traceback.

Each subclass also derives from the built-in exception of the same kind (``ValueError``,
``FileNotFoundError``, ...), so code that catches the built-in kind keeps working.
"""

from __future__ import annotations

__all__ = ["ConfigError", "FileFormatError", "MissingDependencyError", "MissingFileError", "OutputExistsError",
           "PhregError", "UnsupportedModelError", "WriteError"]


class PhregError(Exception):
    """A user-facing error of phreg-core / phreg-bench: its message names the option or file and the fix."""


class ConfigError(PhregError, ValueError):
    """A setting or option value that is out of range, of the wrong type or inconsistent with another."""


class FileFormatError(PhregError, ValueError):
    """A file that exists but is not what it should be (malformed, truncated, of another format or version)."""


class MissingFileError(PhregError, FileNotFoundError):
    """A file or folder the user named (or that a named file refers to) does not exist."""


class OutputExistsError(PhregError, FileExistsError):
    """An output folder already holds work that would be overwritten."""


class WriteError(PhregError, OSError):
    """A file could not be written (disk full, no permission, read-only file system)."""


class MissingDependencyError(PhregError, ImportError):
    """An optional extra (``pip install 'phreg-bench[...]'``) that this feature needs is not installed."""


class UnsupportedModelError(PhregError, TypeError):
    """A model that is not the kind of ViT the project supports (named, with what is supported instead)."""
