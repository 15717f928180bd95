"""Fetch weight and config files from the Hugging Face Hub, failing fast and clearly when offline.

Order of resolution for ``fetch(repo, filenames)``:

1. a file already in the local cache is used as it is (no network access at all);
2. with ``HF_HUB_OFFLINE`` set, or when the endpoint cannot be reached within ``PROBE_TIMEOUT_S``
   (a TCP connect to the endpoint or its proxy, run in a thread so that a hanging DNS lookup cannot
   stall it), :class:`HubUnavailableError` says what to download, where the cache is and which
   environment variables and options to use;
3. otherwise the first candidate file that exists in the repo is downloaded with ``hf_hub_download``.

Environment variables are read at call time (``HF_HUB_OFFLINE``, ``HF_ENDPOINT``, ``HF_HOME``,
``HF_HUB_CACHE``, ``HTTPS_PROXY``), so they work even when set after ``huggingface_hub`` was imported.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from phreg_core.errors import PhregError

PROBE_TIMEOUT_S = float(os.environ.get("PHREG_HUB_PROBE_TIMEOUT", "1.5"))
TIMM_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's order (load_state_dict_from_hf)
OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's order
DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "true", "yes", "on"}


class HubUnavailableError(PhregError, RuntimeError):
    """Weights or configs that are neither cached nor downloadable right now."""


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or DEFAULT_ENDPOINT


def cache_dir() -> Path:
    """The hub cache folder huggingface_hub uses (``HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface")
    return Path(home).expanduser() / "hub"


def offline_flag() -> bool:
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _probe_target(url: str) -> tuple[str, int]:
    """The host and port a download would connect to first: the endpoint, or its proxy."""
    parsed = urlparse(url)
    proxies = urllib.request.getproxies()  # HTTPS_PROXY / https_proxy / ALL_PROXY, as requests reads them
    proxy = proxies.get(parsed.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(parsed.hostname or ""):
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    return parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)


def unreachable_reason(url: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be reached right now, or ``None`` if a TCP connection succeeds."""
    if offline_flag():
        return "HF_HUB_OFFLINE is set"
    url = url or endpoint()
    host, port = _probe_target(url)
    result: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except Exception as error:  # noqa: BLE001 - any failure means "unreachable"
            result.append(f"cannot connect to {host}:{port} ({error.__class__.__name__}: {error})")

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout + 0.2)
    if not result:
        return f"no answer from {host}:{port} within {timeout:.1f} s"
    return result[0]


WEIGHTS_HINT = "pass `--weights PATH` with a local file (`--random-init` runs without any weights)"


def unavailable_message(repo_id: str, filenames: Sequence[str], reason: str, what: str,
                        local_hint: str = WEIGHTS_HINT) -> str:
    """The offline error text; ``local_hint`` says how to use a local copy instead (default: ``--weights``)."""
    names = " or ".join(repr(name) for name in filenames)
    first = filenames[0]
    return (
        f"cannot get {what}: {reason}.\n"
        f"  needed: file {names} of the Hugging Face repo {repo_id!r}\n"
        f"  cache folder: {cache_dir()} (set HF_HOME or HF_HUB_CACHE to use another one)\n"
        f"  fix: on a machine with internet run `hf download {repo_id} {first}` and copy its cache folder here "
        f"(HF_HOME); unset HF_HUB_OFFLINE once online; or {local_hint}"
    )


def cached_file(repo_id: str, filenames: Sequence[str], revision: str | None = None) -> Path | None:
    """The first candidate already in the local cache, without touching the network."""
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        found = try_to_load_from_cache(repo_id, name, cache_dir=str(cache_dir()), revision=revision)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def fetch(repo_id: str, filenames: Sequence[str], *, what: str = "weights", revision: str | None = None,
          local_hint: str = WEIGHTS_HINT) -> Path:
    """Local path of the first of ``filenames`` found in ``repo_id`` (cache first, then download).

    ``local_hint`` ends the offline error: how to use a local file instead (default: ``--weights PATH``).
    """
    found = cached_file(repo_id, filenames, revision)
    if found is not None:
        return found
    reason = unreachable_reason()
    if reason:
        raise HubUnavailableError(unavailable_message(repo_id, filenames, reason, what, local_hint))

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    missing = []
    for name in filenames:
        try:
            return Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=str(cache_dir()),
                                        endpoint=endpoint(), etag_timeout=10))
        except LocalEntryNotFoundError as error:  # the connection failed mid-way
            raise HubUnavailableError(unavailable_message(repo_id, filenames, str(error).split("\n")[0], what,
                                                          local_hint)) from error
        except GatedRepoError as error:
            raise HubUnavailableError(f"repo {repo_id!r} is gated: accept its terms on the Hub and log in with "
                                      f"`hf auth login` (or set HF_TOKEN)") from error
        except RepositoryNotFoundError as error:
            raise HubUnavailableError(f"repo {repo_id!r} does not exist on {endpoint()} (or is private)") from error
        except EntryNotFoundError:
            missing.append(name)
        except OSError as error:  # network errors from the HTTP client
            raise HubUnavailableError(unavailable_message(repo_id, filenames, f"download failed: {error}", what,
                                                          local_hint)) from error
    raise HubUnavailableError(f"repo {repo_id!r} has none of the files {missing}")
