"""Checkpoint folders before anything is built: model names, the cache, and every check of a folder's files.

Every problem a folder can have (missing, not a DiffusionVL checkpoint, corrupt or incomplete config,
missing or truncated weights) becomes a `CheckpointLayoutError` that names the folder, the file or field, and the
fix, before a single weight is allocated. Nothing here imports the model classes (loading.py builds them), so
model.py can check a folder from its own from_pretrained.
"""

import importlib
import json
import os
import re
import struct
from pathlib import Path

from ..errors import CheckpointLayoutError

DIFFUSIONVL_TYPE, COMPOSITE_TYPE = "diffusionvl", "diffusionvl_vlm"
# model_type of the original release's checkpoints -> their loader in released.py. The Qwen2.5-VL name is
# documented (SPEC §4); the SigLIP variant's is assumed from its repository name (DiffusionVL-Qwen2.5-7B).
RELEASED_TYPES = {"diffusionvl_qwenvl": "load_released_qwenvl", "diffusionvl_qwen": "load_released_siglip"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# Models that ship inside the package (MiniVL, trained by `diffusionvl recipe minivl`; minivl-dvlm-draft: draft-only
# adapters on minivl-ar, README "A translation that keeps its source exactly"): name -> folder name.
SHIPPED_MODELS = ("minivl-dvlm", "minivl-ar", "minivl-dvlm-draft")
DEFAULT_MODEL = "minivl-dvlm"
SHIPPED_FOLDER = Path(__file__).parents[1] / "minivl" / "weights"
# Models built into the cache on first use, by a function of their subpackage ("module:function" -> folder).
CACHED_MODELS = {"smollm2": "smollm2.source:base_folder", "smollm2-dlm": "smollm2.source:dlm_folder"}
ADAPTER_MANIFEST, ADAPTER_BUILDER = "adapter.json", "training.adapters:materialised"  # an adapter folder's model
MODEL_NAMES = SHIPPED_MODELS + tuple(CACHED_MODELS)


def cache_root() -> Path:
    """Where models built on first use live: $DIFFUSIONVL_CACHE, else ~/.cache/diffusionvl."""
    return Path(os.environ.get("DIFFUSIONVL_CACHE") or Path.home() / ".cache" / "diffusionvl")


def resolve_model(path):
    """A model's name -> its folder: inside the package (minivl-dvlm, minivl-ar, minivl-dvlm-draft) or built into
    the cache on first use (smollm2, smollm2-dlm). A local folder of that name wins. An adapter folder (`recipe
    smollm2`'s OUT/smollm2-dlm, training/adapters.py) -> its full checkpoint, built into the cache on first use.
    Any other path or hub id is returned unchanged."""
    if (Path(path) / ADAPTER_MANIFEST).is_file():
        return str(_build(ADAPTER_BUILDER, path))
    if str(path) not in MODEL_NAMES or Path(path).exists():
        return path
    if str(path) in CACHED_MODELS:
        return str(_build(CACHED_MODELS[str(path)]))
    folder = SHIPPED_FOLDER / str(path)
    if not (folder / "config.json").is_file():
        raise CheckpointLayoutError(
            f"the shipped model {path!r} is missing from this installation ({folder}); reinstall diffusionvl, or "
            f"rebuild it with `diffusionvl recipe minivl --out DIR` and copy DIR/{path} there.")
    return str(folder)


def _build(builder: str, *args):
    """Call "module:function" of a higher layer, imported by name on use (this layer must not import it)."""
    module, function = builder.split(":")
    return getattr(importlib.import_module(f"diffusionvl.{module}"), function)(*args)


def read_config(path: Path) -> dict:
    if not path.exists():
        raise CheckpointLayoutError(f"model folder not found: {path}; pass a directory written by save_pretrained "
                                    "or diffusionvl convert.")
    if not (path / "config.json").is_file():
        raise CheckpointLayoutError(f"{path} holds no config.json; pass a directory written by save_pretrained "
                                    "or diffusionvl convert.")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointLayoutError(f"{path / 'config.json'} is not valid JSON ({error}); restore it from the saved "
                                    "checkpoint.") from error
    if not isinstance(config, dict):
        raise CheckpointLayoutError(f"{path / 'config.json'} must hold a JSON object, got {type(config).__name__}.")
    return config


def _known_model_type(model_type) -> bool:
    from transformers import CONFIG_MAPPING

    return model_type in CONFIG_MAPPING


def _check_diffusionvl_config(path: Path, config: dict) -> None:
    base = config.get("base_config")
    where = path / "config.json"
    if not isinstance(base, dict):
        raise CheckpointLayoutError(
            f"{where} has no base_config (the wrapped model's config), so the architecture is unknown; it was not "
            "written by DiffusionVL.save_pretrained. Save the model again, or restore the file.")
    if not _known_model_type(base.get("model_type")):
        raise CheckpointLayoutError(
            f"{where}: base_config.model_type {base.get('model_type')!r} is not an architecture this transformers "
            "knows; fix the field, or upgrade transformers if the model is newer than it.")
    for field in ("mask_token_id", "eot_token_id"):
        if not isinstance(config.get(field), int):
            raise CheckpointLayoutError(
                f"{where} names no {field} (got {config.get(field)!r}); a DiffusionVL checkpoint needs its mask and "
                "end-of-turn ids. Save the model again, or set the field to the token's id.")
    _check_fields(where, config)


def _check_fields(where: Path, config: dict) -> None:
    """Every field has a valid type and value (e.g. noisy_stream: "compact" from a newer version, block_size: "8"):
    the config's own checks, reported against the file rather than from deep inside transformers."""
    from huggingface_hub.errors import StrictDataclassError

    from ..modeling.config import DiffusionVLConfig

    try:
        DiffusionVLConfig.from_dict(config)
    except (StrictDataclassError, ValueError) as error:
        problem = " ".join(str(error).split()).rstrip(".")  # the strict dataclass error spans lines
        raise CheckpointLayoutError(f"{where}: {problem}. Fix the field, or save the model again.") from error


def check_checkpoint(path) -> str:
    """Check a local checkpoint folder before anything is built; returns its model_type."""
    path = Path(path)
    config = read_config(path)
    found = config.get("model_type")
    if found == DIFFUSIONVL_TYPE:
        _check_diffusionvl_config(path, config)
    elif found not in RELEASED_TYPES and found != COMPOSITE_TYPE:
        raise CheckpointLayoutError(
            f"{path} holds a {found!r} checkpoint, not a DiffusionVL one. Translate an autoregressive model first: "
            f"`diffusionvl convert {path} NEW_DIR` (or DiffusionVL.from_autoregressive(model, tokenizer) in Python).")
    check_weights(path)
    return found


def check_weights(path: Path) -> None:
    """The weight files exist and none is truncated (safetensors headers name every tensor's byte range)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as error:
            raise CheckpointLayoutError(f"{index} is not a valid weight index ({error}).") from error
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    elif (path / "pytorch_model.bin").is_file():
        return
    else:
        raise CheckpointLayoutError(f"{path} holds no weights (model.safetensors, an index with shards, or "
                                    "pytorch_model.bin); copy them from where the model was saved.")
    for name in files:
        check_safetensors(path / name)


def check_safetensors(file: Path) -> None:
    """A safetensors file is 8 bytes of header length, a JSON header, then the tensors' bytes."""
    if not file.is_file():
        raise CheckpointLayoutError(f"weight file {file} is missing; the checkpoint is incomplete.")
    size = file.stat().st_size
    try:
        with file.open("rb") as handle:
            (header_length,) = struct.unpack("<Q", handle.read(8))
            if header_length > size - 8:
                raise ValueError(f"the header claims {header_length} bytes")
            header = json.loads(handle.read(header_length))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointLayoutError(f"weight file {file} is corrupt ({error}); copy it again.") from error
    if 8 + header_length + end > size:
        raise CheckpointLayoutError(
            f"weight file {file} is truncated: {size} bytes, its header needs {8 + header_length + end}; copy it again.")


def local_folder(path) -> Path | None:
    """The folder if `path` is local; None for a hub id (org/name) that is not a local path. Offline
    (HF_HUB_OFFLINE) nothing is fetched, so a missing `org/name` is a missing local folder, and is named so."""
    from huggingface_hub import constants

    if Path(path).exists() or not REPO_ID.match(str(path)) or constants.HF_HUB_OFFLINE:
        return Path(path)
    return None


def is_diffusionvl_folder(folder) -> bool:
    """Whether a local checkpoint folder (or shipped model name) holds a DiffusionVL (ours, a released layout, or
    the composite)."""
    found = read_config(Path(resolve_model(folder))).get("model_type")
    return found in (DIFFUSIONVL_TYPE, COMPOSITE_TYPE) or found in RELEASED_TYPES


def is_autoregressive_folder(path) -> bool:
    """Whether a local folder (or shipped model name) holds a plain transformers checkpoint, not a DiffusionVL."""
    folder = local_folder(resolve_model(path))
    return folder is not None and not is_diffusionvl_folder(folder)
