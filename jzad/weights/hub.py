"""Fetching a Hugging Face CLIP checkpoint (config, weights, tokenizer files) when the hub is reachable.

huggingface_hub is imported lazily. A snapshot already in the local Hugging Face cache is used without the
network. Otherwise, offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) the caller gets a HubUnavailableError
(ConnectionError) at once, and without a network within ``HUB_PROBE_SECONDS`` (one TCP connection to the hub's
host, instead of the hub client's retries, about 25 s); the error says how to port a local file instead.
Nothing here reaches the network in tests.
"""

from __future__ import annotations

import importlib
import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TRUE = {"1", "true", "yes", "on"}
EXAMPLE_PORT = "python -m jzad.weights port /path/to/ViT-L-14-336px.pt --name vit-l-14-336"
DEFAULT_ENDPOINT = "https://huggingface.co"
HUB_PROBE_SECONDS = 2.0


class HubUnavailableError(ConnectionError, FileNotFoundError):
    """The weights are not on this machine and the hub cannot be used (offline or unreachable).

    Both a ConnectionError and a FileNotFoundError, so callers catching either see it."""


def looks_like_hf_id(text: str) -> bool:
    """Whether text has the form owner/name of a Hugging Face model id."""
    return bool(HF_ID.match(text))


def hub_offline() -> bool:
    """Whether the environment forbids hub access (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set true)."""
    return any(os.environ.get(var, "").strip().lower() in TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_address() -> tuple[str, int]:
    """(host, port) of the hub: $HF_ENDPOINT, else huggingface.co, port 443 for https."""
    url = urlsplit(os.environ.get("HF_ENDPOINT", "").strip() or DEFAULT_ENDPOINT)
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether a TCP connection to the hub's host opens within ``timeout`` seconds. The probe (name lookup
    included, which has no timeout of its own) runs in a daemon thread, so a hanging resolver cannot hold the
    caller longer."""
    host, port = hub_address()
    answer: list[bool] = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, name="jzad-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def cached_snapshot(repo_id: str) -> Path | None:
    """The snapshot of repo_id's main revision in the local Hugging Face cache when it holds config.json and a
    weights file, else None. Reads the cache layout (models--<owner>--<name>/refs/main -> snapshots/<commit>)
    directly: no network, and none of the hub client's start-up cost (seconds)."""
    repo = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    try:
        commit = (repo / "refs" / "main").read_text().strip()
    except OSError:
        return None
    folder = repo / "snapshots" / commit
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    if commit and (folder / "config.json").is_file() and any((folder / name).is_file() for name in weights):
        return folder
    return None


def _offline_message(repo_id: str, reason: str, hint: str | None) -> str:
    return (
        f"cannot download {repo_id} from the Hugging Face hub: {reason}. Port a local file instead, e.g. "
        f"`{hint or EXAMPLE_PORT}` (an OpenAI .pt, an OpenCLIP state dict or a Hugging Face folder with "
        "config.json + model.safetensors), then use the ported name"
    )


def _pick_weights(files: list[str]) -> list[str]:
    candidates = (
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    )
    for candidate in candidates:
        if candidate in files:
            if candidate.endswith(".index.json"):
                stem = candidate.removesuffix(".index.json").rsplit(".", 1)
                return [candidate, f"{stem[0]}-*.{stem[1]}"]
            return [candidate]
    raise ValueError(f"the hub repository has no CLIP weights file (model.safetensors / pytorch_model.bin): {files}")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's connection error classes (httpx2 or httpx, whichever the hub uses)."""
    found = []
    for module_name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found.append(module.TransportError)
    return tuple(found)


def download_hf(repo_id: str, port_hint: str | None = None) -> Path:
    """Download config.json, the weights and the tokenizer files of repo_id; return the local folder.

    A complete snapshot in the local Hugging Face cache is returned without the network. Raises
    HubUnavailableError (a ConnectionError and FileNotFoundError; offline, or no connection to the hub within
    ``HUB_PROBE_SECONDS``, or a network failure) with port instructions, ValueError for an unknown repository.
    """
    cached = cached_snapshot(repo_id)
    if cached is not None:
        return cached
    if hub_offline():
        raise HubUnavailableError(_offline_message(repo_id, "the hub is disabled (HF_HUB_OFFLINE=1)", port_hint))
    if not hub_reachable():
        host, port = hub_address()
        raise HubUnavailableError(_offline_message(
            repo_id, f"no network connection to {host}:{port} within {HUB_PROBE_SECONDS:g} s", port_hint))
    import huggingface_hub
    from huggingface_hub import errors

    try:
        files = huggingface_hub.list_repo_files(repo_id)
        patterns = _pick_weights(files) + [
            "config.json",
            "vocab.json",
            "merges.txt",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ]
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=patterns))
    except errors.RepositoryNotFoundError as err:
        raise ValueError(f"{repo_id} is not a Hugging Face model id the hub knows: {err}") from err
    except (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError, OSError, *_transport_errors()) as err:
        raise HubUnavailableError(_offline_message(repo_id, f"the hub is not reachable ({err})", port_hint)) from err
