"""``hf-hub:<org>/<repo>[/<path in repo>][@<revision>]``: one spelling for files on the Hugging Face hub.

Adapters (``--adapter hf-hub:user/repo``) and method weights (``-o denoiser=hf-hub:org/repo/file.pth``) are
named this way. Fetching goes through :func:`phreg_bench.backbones.hub.fetch`: the local cache first, then a
fast reachability probe, so an offline machine gets the same clear "what to download, where the cache is"
error as for backbone weights, ending with how to pass a local copy instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from phreg_core.errors import PhregError

PREFIX = "hf-hub:"


class HubSpecError(PhregError, ValueError):
    """A malformed ``hf-hub:`` name."""


@dataclass(frozen=True)
class HubSpec:
    """A parsed ``hf-hub:`` name: ``repo_id`` (``org/repo``), optional ``path`` in the repo and ``revision``."""

    repo_id: str
    path: str | None = None
    revision: str | None = None

    @classmethod
    def parse(cls, text: str, *, what: str = "hub name") -> HubSpec:
        """Parse ``hf-hub:org/repo[/path/in/repo][@revision]``; raises :class:`HubSpecError`."""
        if not is_hub_spec(text):
            raise HubSpecError(f"{what} {text!r} does not start with {PREFIX!r}")
        body, _, revision = text[len(PREFIX):].partition("@")
        parts = [part for part in body.split("/") if part]
        if len(parts) < 2 or any(part in (".", "..") for part in parts):
            raise HubSpecError(f"{what} {text!r}: expected {PREFIX}<org>/<repo>[/<path in repo>][@<revision>], "
                               "e.g. hf-hub:my-user/phreg-clip-b16")
        return cls("/".join(parts[:2]), "/".join(parts[2:]) or None, revision or None)

    def __str__(self) -> str:
        path = f"/{self.path}" if self.path else ""
        revision = f"@{self.revision}" if self.revision else ""
        return f"{PREFIX}{self.repo_id}{path}{revision}"

    def fetch(self, filenames: Sequence[str], *, what: str, local_hint: str) -> Path:
        """Local path of the first of ``filenames`` (relative to :attr:`path`) in the repo, cache first."""
        from phreg_bench.backbones.hub import fetch

        prefix = f"{self.path}/" if self.path else ""
        return fetch(self.repo_id, [prefix + name for name in filenames], what=what, revision=self.revision,
                     local_hint=local_hint)


def is_hub_spec(text: object) -> bool:
    return isinstance(text, str) and text.startswith(PREFIX)
