"""A translated model kept as its difference from the AR checkpoint it came from: LoRA adapters plus the
embedding rows the translation added (the mask token). Small enough to ship; rebuilt in full on first use.

Folder layout (written by `save_adapter`):
    adapter.json          {"base": name or path of the AR checkpoint, "config": the DiffusionVL fields (block
                          size, special ids, logit shift, LoRA settings...), "rows": [embedding row ids]}
    adapter.safetensors   every LoRA tensor (named as in the DiffusionVL state dict) and "embedding_rows" (R, H)
    tokenizer files       the source's tokenizer with <|mask|> added

`materialise(adapter, dst)` loads the base, translates it with the recorded settings, loads every tensor
(strictly: a missing or unexpected one is an error), merges the adapters into the weights and saves an
ordinary DiffusionVL checkpoint at `dst`, which every loader then opens as usual. Draft-only adapters
(lora_scope "noisy") are loaded as adapters instead, since they act on the noisy stream alone.
"""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import CheckpointLayoutError

MANIFEST, TENSORS, ROWS = "adapter.json", "adapter.safetensors", "embedding_rows"
STAMP = "adapter.sha256"  # beside a materialised model: which adapter it was built from


def is_adapter_folder(path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _diffusion_fields(config) -> dict:
    from ..modeling.config import DiffusionVLConfig

    return {name: getattr(config, name) for name in DiffusionVLConfig.__annotations__ if name != "base_config"}


def save_adapter(model, tokenizer, folder, base: str, rows: list[int], dtype=torch.bfloat16) -> Path:
    """Write the adapter of a DiffusionVL that still holds its LoRA layers (before `merge_lora`). `rows`: the
    embedding rows that differ from the base (e.g. [model.special_tokens.mask]); tensors are stored in `dtype`."""
    from safetensors.torch import save_file

    if not model.config.lora:
        raise CheckpointLayoutError("the model holds no LoRA adapters (config.lora is empty): save it whole with "
                                    "save_pretrained, or train it with --lora-rank.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: value.detach().to(dtype).contiguous() for name, value in model.state_dict().items()
               if "lora_" in name}
    tensors[ROWS] = model.get_input_embeddings().weight[rows].detach().to(dtype).contiguous()
    save_file(tensors, str(folder / TENSORS))
    manifest = {"base": str(base), "config": _diffusion_fields(model.config), "rows": list(rows)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    tokenizer.save_pretrained(folder)
    return folder


def _read_manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointLayoutError(f"{folder / MANIFEST} cannot be read ({error}); copy the adapter folder "
                                    "again.") from error
    missing = [key for key in ("base", "config", "rows") if not isinstance(manifest, dict) or key not in manifest]
    if missing:
        raise CheckpointLayoutError(f"{folder / MANIFEST} lacks {', '.join(missing)}; copy the adapter folder again.")
    return manifest


def adapter_config(folder) -> dict:
    """The DiffusionVL config fields the adapter was trained with (block size, logit shift, context attention...)."""
    return _read_manifest(Path(folder))["config"]


def build(folder) -> "torch.nn.Module":
    """The DiffusionVL of an adapter folder, its adapters merged into the weights (in memory; `materialise` keeps
    a saved copy). Merging is W += (alpha / r) B A per adapted layer, so loading needs no PEFT; draft-only
    adapters are kept as adapters, which does."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from ..loading import load_autoregressive
    from ..model import DiffusionVL

    folder = Path(folder)
    manifest = _read_manifest(folder)
    settings = dict(manifest["config"])
    lora, mask = settings.pop("lora"), settings.pop("mask_token_id")
    settings.pop("image_token_id")  # the base's config names it
    special = {key: settings.pop(key) for key in ("block_size", "eot_token_id", "pad_token_id")}
    # the mask token is found by name in the adapter's tokenizer, which grows the base's embedding to hold its row
    model = DiffusionVL.from_autoregressive(load_autoregressive(manifest["base"]), AutoTokenizer.from_pretrained(folder),
                                            **special, **settings)
    if model.special_tokens.mask != mask:
        raise CheckpointLayoutError(f"{folder}: the tokenizer's <|mask|> is id {model.special_tokens.mask}, the "
                                    f"adapter was trained with {mask}; copy the adapter folder again, tokenizer too.")
    tensors = load_file(str(folder / TENSORS))
    rows = tensors.pop(ROWS, None)
    if rows is None or rows.shape[0] != len(manifest["rows"]):
        raise CheckpointLayoutError(f"{folder / TENSORS} holds no embedding rows for {manifest['rows']}; copy the "
                                    "adapter folder again.")
    with torch.no_grad():
        if lora and model.config.lora_scope == "noisy":
            _load_unmerged(model, tensors, lora, folder, manifest)
        elif lora:
            _merge(model, tensors, lora["lora_alpha"] / lora["r"], set(lora["target_modules"]), folder, manifest)
        weight = model.get_input_embeddings().weight
        weight[manifest["rows"]] = rows.to(weight.dtype)
    return model


def _merge(model, tensors: dict, scale: float, targets: set, folder: Path, manifest: dict) -> None:
    """W += scale * B @ A for every adapted linear layer; the adapted layers must be exactly the targets'."""
    layers = {name: module for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets}
    pairs = {key.split(".lora_A.")[0] for key in tensors if ".lora_A." in key}
    expected = {f"{name}.lora_{part}.default.weight" for name in layers for part in "AB"}
    if set(tensors) != expected:
        missing, unexpected = sorted(expected - set(tensors))[:3], sorted(set(tensors) - expected)[:3]
        raise CheckpointLayoutError(f"{folder / TENSORS} does not fit its base {manifest['base']!r}: missing "
                                    f"{missing}, unexpected {unexpected}; copy the adapter folder again.")
    for name in pairs:
        layer = layers[name]
        a, b = tensors[f"{name}.lora_A.default.weight"], tensors[f"{name}.lora_B.default.weight"]
        layer.weight += (scale * (b.float() @ a.float())).to(layer.weight.dtype)


def _load_unmerged(model, tensors: dict, lora: dict, folder: Path, manifest: dict) -> None:
    """Draft-only adapters stay adapters (they act on the noisy stream alone): rebuild the LoRA layers and load
    every tensor into them, strictly."""
    from ..modeling.lora import inject_lora

    inject_lora(model.model, lora)
    model.config.lora = lora
    expected = {name for name in model.state_dict() if "lora_" in name}
    if set(tensors) != expected:
        missing, unexpected = sorted(expected - set(tensors))[:3], sorted(set(tensors) - expected)[:3]
        raise CheckpointLayoutError(f"{folder / TENSORS} does not fit its base {manifest['base']!r}: missing "
                                    f"{missing}, unexpected {unexpected}; copy the adapter folder again.")
    model.load_state_dict(tensors, strict=False)


def materialised(folder) -> Path:
    """The full checkpoint of the adapter at `folder`, passed as a model path to any loader: built into the cache
    on first use (one checkpoint per adapter location, rebuilt when the adapter changes)."""
    from ..checkpoints.folders import cache_root

    folder = Path(folder).resolve()
    key = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    return materialise(folder, cache_root() / "adapters" / f"{folder.name}-{key}")


def materialise(folder, dst) -> Path:
    """`dst`: the full checkpoint of the adapter at `folder`, rebuilt when missing or built from another adapter."""
    folder, dst = Path(folder), Path(dst)
    stamp = hashlib.sha256((folder / TENSORS).read_bytes() + (folder / MANIFEST).read_bytes()).hexdigest()
    if (dst / "config.json").is_file() and (dst / STAMP).is_file() and (dst / STAMP).read_text() == stamp:
        return dst
    from transformers import AutoTokenizer

    model = build(folder)
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(folder).save_pretrained(staging)
        (staging / STAMP).write_text(stamp)
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(staging, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dst
