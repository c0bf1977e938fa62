"""Hub ids (`hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k`, `google/vit-base-patch16-224`).

Files come through huggingface_hub's cache: downloaded once when online, read from the cache when offline
(HF_HUB_OFFLINE=1); offline and uncached is an error naming the id and the cache folder.
"""

from __future__ import annotations

import os
import re

from vitkit.convert.files import ConversionError, read_json_file
from vitkit.models.registry import DEFAULT_PRETRAINED, lookup

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def default_pretrained(name: str | None) -> str:
    """The hub id `pretrained=True` loads for model `name`; a ValueError naming the choices for another."""
    if name is None:
        raise ValueError(
            "pretrained=True needs the model's name, e.g. create_model('ViT-B/16', pretrained=True)"
        )
    source = lookup(DEFAULT_PRETRAINED, name)
    if source is not None:  # marked as a hub id: a local folder timm/ or google/ (a timm checkout) is not it
        return source if source.startswith("hf-hub:") else f"hf-hub:{source}"
    raise ValueError(
        f"pretrained=True: no default weights for {name!r}; the defaults are for {', '.join(DEFAULT_PRETRAINED)}. "
        "Pass pretrained=<path, run folder or hub id> instead (e.g. 'google/vit-base-patch16-224')"
    )


# names of weights files: a path ending so that does not exist is a missing file, not a hub id to look up
FILE_SUFFIXES = (".npz", ".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".onnx", ".json", ".h5", ".msgpack")


def is_hub_id(source: str) -> bool:
    """`hf-hub:owner/name`, or `owner/name` that is not a local path (nor under a local folder `owner`)."""
    if source.startswith("hf-hub:"):
        return True
    owner = source.split("/")[0]
    if source.lower().endswith(FILE_SUFFIXES):  # a mistyped file name, not a repository
        return False
    return bool(_REPO_ID.match(source)) and not os.path.exists(source) and not os.path.isdir(owner)


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise ConversionError(
            "hub ids need the huggingface_hub package: pip install huggingface_hub (vitkit's [hub] extra) (or pass a local path)"
        ) from None
    return huggingface_hub


def cache_dir() -> str:
    """The folder huggingface_hub caches downloads in."""
    _hub()
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _download(hub, repo_id: str, filename: str, required: bool = False) -> str | None:
    """The cached path of one file, or None if the repo has no such file (or, unless `required`, it cannot be
    fetched now: offline or no connection, and not cached); a required file that cannot be fetched raises
    huggingface_hub's LocalEntryNotFoundError."""
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return hub.hf_hub_download(repo_id, filename)
    except LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError) not cached, hub unreachable
        if required:
            raise
        return None
    except EntryNotFoundError:
        return None


def _download_shards(hub, repo_id: str, index_path: str) -> None:
    """Every file a sharded checkpoint's index names."""
    for name in sorted(set((read_json_file(index_path).get("weight_map") or {}).values())):
        if _download(hub, repo_id, name) is None:
            raise LookupError(f"shard {name}")


def fetch(source: str) -> str:
    """The local snapshot folder holding config.json and the weights of hub id `source`."""
    hub = _hub()
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    repo_id = source.removeprefix("hf-hub:")
    offline = bool(constants.HF_HUB_OFFLINE)
    try:
        config = _download(hub, repo_id, "config.json", required=True)
        if config is None:
            raise LookupError("config.json")
        folder = os.path.dirname(config)
        _download(hub, repo_id, "preprocessor_config.json")  # optional: mean and std
        unreachable = None
        for name in WEIGHT_FILES:
            try:
                path = _download(hub, repo_id, name, required=True)
            except LocalEntryNotFoundError as e:  # try the other name; if neither: unreachable, not missing
                path, unreachable = None, e
            if path is not None:
                if os.path.dirname(path) != folder:
                    raise ConversionError(f"{source}: config.json and {name} resolved to different snapshots")
                return folder
        for index in SHARD_INDEXES:
            path = _download(hub, repo_id, index)
            if path is not None:
                _download_shards(hub, repo_id, path)
                return folder
        if unreachable is not None:
            raise unreachable
        raise LookupError(" or ".join(WEIGHT_FILES))
    except LookupError as e:
        why = "offline (HF_HUB_OFFLINE=1) and not in the cache" if offline else "not found in the repository"
        raise ConversionError(
            f"hub id {source!r}: {e.args[0]} {why}; cache folder: {cache_dir()}"
            + (". Download it once while online, or pass a local path" if offline else "")
        ) from None
    except LocalEntryNotFoundError:
        local = "" if source.startswith("hf-hub:") else f" (nor is {source!r} a local file or folder)"
        raise ConversionError(
            f"hub id {source!r}: the Hugging Face hub cannot be reached (no connection, or HF_HUB_OFFLINE=1) and it "
            f"is not in the cache folder {cache_dir()}{local}. Download it once while online, or pass a local path"
        ) from None
    except (OfflineModeIsEnabled, RepositoryNotFoundError, HfHubHTTPError, OSError) as e:
        raise ConversionError(
            f"hub id {source!r} could not be fetched ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"cache folder: {cache_dir()}"
        ) from None
