"""The one base class of the project's own errors.

Every error that reports a user's mistake or a bad file (an option out of range, a missing dataset folder,
a malformed result file, an adapter made for other weights) derives from :class:`PhregError`. The command
line turns exactly these into one-line messages with exit status 2; anything else is a programming error
or an environment failure (CUDA out of memory, a bug) and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["PhregError"]


class PhregError(Exception):
    """A user-facing error of phreg-core / phreg-bench: its message names the option or file and the fix."""
