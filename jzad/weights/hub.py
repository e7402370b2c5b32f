"""Fetching a Hugging Face CLIP checkpoint (config, weights, tokenizer files) when the hub is reachable.

huggingface_hub is imported lazily. Offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) or on a network error
the caller gets a HubUnavailableError (ConnectionError) that says how to port a local file instead.
Nothing here runs in tests except the offline refusal.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TRUE = {"1", "true", "yes", "on"}
EXAMPLE_PORT = "python -m jzad.weights port /path/to/ViT-L-14-336px.pt --name vit-l-14-336"


class HubUnavailableError(ConnectionError, FileNotFoundError):
    """The weights are not on this machine and the hub cannot be used (offline or unreachable).

    Both a ConnectionError and a FileNotFoundError, so callers catching either see it."""


def looks_like_hf_id(text: str) -> bool:
    """Whether text has the form owner/name of a Hugging Face model id."""
    return bool(HF_ID.match(text))


def hub_offline() -> bool:
    """Whether the environment forbids hub access (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set true)."""
    return any(os.environ.get(var, "").strip().lower() in TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


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

    Raises HubUnavailableError (a ConnectionError and FileNotFoundError; offline or network failure) with
    port instructions, ValueError for an unknown repository.
    """
    if hub_offline():
        raise HubUnavailableError(_offline_message(repo_id, "the hub is disabled (HF_HUB_OFFLINE=1)", port_hint))
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
