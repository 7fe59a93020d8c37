"""Loaders for the layouts the original DiffusionVL release uses (SPEC §4). Strict: every weight of the model
must be found and every tensor of the checkpoint must be used; the only allowed gaps are a tied lm_head and
the SigLIP post-layernorm/head the release drops on purpose."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import Qwen2_5_VLConfig
from transformers.initialization import no_init_weights

from ..errors import CheckpointLayoutError
from ..modeling.config import DiffusionVLConfig
from ..modeling.tokens import IMAGE_TOKEN, RELEASED_MASK_TOKEN_ID, known_id
from .folders import check_safetensors

TEXT_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "hidden_act", "attention_dropout",
    "sliding_window", "use_sliding_window", "max_window_layers", "bos_token_id", "eos_token_id", "pad_token_id",
    "tie_word_embeddings",
)
# released name -> name inside transformers' Qwen2_5_VLForConditionalGeneration, first match wins
RENAMES = (
    ("model.vision_tower.vision_tower.", "model.visual."),
    ("model.mm_projector.merger.", "model.visual.merger."),
    ("model.embed_tokens.", "model.language_model.embed_tokens."),
    ("model.layers.", "model.language_model.layers."),
    ("model.norm.", "model.language_model.norm."),
    ("lm_head.", "lm_head."),
)
SPLIT_FILES = {"vision_tower.safetensors": "model.visual.", "projector.safetensors": "model.visual.merger."}


def _text_config(released: dict) -> tuple[dict, dict]:
    """(where the text fields live, the known ones of them): a `text_config`, or the top level."""
    source = released.get("text_config") or released
    return source, {k: source[k] for k in TEXT_FIELDS if k in source}


def _rope_parameters(config: dict) -> dict:
    """Released configs carry `rope_scaling` {"type": "mrope", "mrope_section": [...]} and `rope_theta`."""
    if "rope_parameters" in config:
        return config["rope_parameters"]
    head_dim = config["hidden_size"] // config["num_attention_heads"] // 2
    section = (config.get("rope_scaling") or {}).get("mrope_section")
    if section is None:  # any split gives 1-D RoPE when all three axes hold the same index
        section = [head_dim - 2 * (3 * head_dim // 8), 3 * head_dim // 8, 3 * head_dim // 8]
    return {"rope_type": "default", "rope_theta": config.get("rope_theta", 1000000.0), "mrope_section": section}


def qwenvl_config(released: dict, vision: dict) -> Qwen2_5_VLConfig:
    """transformers' Qwen2.5-VL config from the released one (text fields at the top level or in text_config)."""
    text_source, text = _text_config(released)
    text["rope_parameters"] = _rope_parameters(text_source)
    # A null id (e.g. "video_token_id": null in a release without video) is unused, not an error: leave it out.
    ids = {k: released[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
           if released.get(k) is not None}
    text["tie_word_embeddings"] = tied = released.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tied, **ids)


RELEASED_SIGLIP_RENAMES = (
    ("model.vision_tower.vision_tower.vision_model.", "vision_tower."),
    ("model.mm_projector.", "projector."),
    ("model.image_newline", "image_newline"),
    ("model.embed_tokens.", "language_model.model.embed_tokens."),
    ("model.layers.", "language_model.model.layers."),
    ("model.norm.", "language_model.model.norm."),
    ("lm_head.", "language_model.lm_head."),
)
# The released SigLIP tower loses its last layer and its features are taken before the post-layernorm: these
# may be present in a checkpoint and are dropped on purpose.
DROPPED = ("vision_tower.post_layernorm.", "vision_tower.head.")


def _load(file: Path) -> dict[str, torch.Tensor]:
    check_safetensors(file)  # a truncated file gets an error naming it, not safetensors' "incomplete metadata"
    return load_file(file)


def _read(path: Path, files: list[str]) -> dict[str, torch.Tensor]:
    tensors = {}
    for name in files:
        tensors.update(_load(path / name))
    return tensors


def _weight_files(path: Path) -> list[str]:
    """The safetensors files of a checkpoint: the shards named by an index, or model.safetensors."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    if (path / "model.safetensors").is_file():
        return ["model.safetensors"]
    raise FileNotFoundError(f"{path} has neither model.safetensors nor model.safetensors.index.json.")


def _renamed(path: Path, renames, layout: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under transformers' names; a name no rule covers is an error."""
    out = {}
    for key, tensor in _read(path, _weight_files(path)).items():
        prefix = next((p for p in renames if key.startswith(p[0])), None)
        if prefix is None:
            raise CheckpointLayoutError(f"unexpected tensor {key!r} in {path}: not a {layout} weight name; remove it "
                                        "or load the checkpoint it belongs to.")
        out[prefix[1] + key[len(prefix[0]):]] = tensor
    return out


def _vision_config(path: Path, released: dict) -> dict:
    if "vision_config" in released:
        return released["vision_config"]
    if (path / "vision_config.json").is_file():
        return json.loads((path / "vision_config.json").read_text())
    raise CheckpointLayoutError(f"{path}: the config has no vision_config and there is no vision_config.json; copy the "
                                "vision_config of the model it was trained from into config.json.")


def _read_released(path: Path) -> tuple[dict, dict]:
    """The released config.json and its vision config. A null `image_token_id` is resolved by name: the
    placeholder our processor expands is the tokenizer's image token, so its id is the one the model looks for."""
    released = json.loads((path / "config.json").read_text())
    vision = _vision_config(path, released)  # first: without one, this is not a released checkpoint at all
    if released.get("image_token_id") is None:
        released["image_token_id"] = _image_token_from_tokenizer(path)
    return released, vision


def _image_token_from_tokenizer(path: Path) -> int:
    from transformers import AutoTokenizer

    try:
        found = known_id(AutoTokenizer.from_pretrained(path), IMAGE_TOKEN)
    except (OSError, ValueError):
        found = None
    if found is None:
        raise CheckpointLayoutError(
            f"{path / 'config.json'} has image_token_id null and the folder's tokenizer has no {IMAGE_TOKEN} token to "
            f"take its place: set image_token_id to the id of the image placeholder ({IMAGE_TOKEN}, 151655 in Qwen's "
            "vocabulary).")
    return found


def _diffusion_config(path: Path, base, released: dict, mask_token_id, **fields) -> DiffusionVLConfig:
    eot = base.text_config.eos_token_id
    if eot is None or eot == []:
        raise CheckpointLayoutError(
            f"{path / 'config.json'} has eos_token_id null: set it to the id of the end-of-turn token "
            "(<|im_end|>, 151645 in Qwen's vocabulary), which ends every answer.")
    return DiffusionVLConfig(
        base_config=base, block_size=released.get("bd3lm_block_size", 8),
        mask_token_id=mask_token_id or released.get("mask_token_id", RELEASED_MASK_TOKEN_ID),
        eot_token_id=eot[0] if isinstance(eot, list) else eot, pad_token_id=base.text_config.pad_token_id,
        image_token_id=base.image_token_id, **fields,
    )


def _load_strict(model_class, config: DiffusionVLConfig, state: dict, path: Path, tied_head: str | None, dtype):
    """Build `model_class` (DiffusionVL, passed in by its from_pretrained) without random init, load every tensor,
    and fail on any gap but a tied head."""
    with no_init_weights():
        model = model_class(config)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k != tied_head]
    if missing or result.unexpected_keys:
        raise CheckpointLayoutError(
            f"{path} does not match the released layout: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}."
        )
    if tied_head is not None:
        model.tie_weights()
    model.special_tokens  # the mask id must be a row of this vocabulary
    return model.to(dtype) if dtype is not None else model


def released_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a released Qwen2.5-VL checkpoint under transformers' names: one file, shards, or split."""
    renamed = _renamed(path, RENAMES, "DiffusionVL-Qwen2.5VL")
    for name, target in SPLIT_FILES.items():  # the conversion script's split layout
        if (path / name).is_file():
            renamed.update({target + key: tensor for key, tensor in _load(path / name).items()})
    return renamed


def load_released_qwenvl(path, model_class, mask_token_id: int | None = None, dtype: torch.dtype | None = None):
    """A DiffusionVL-Qwen2.5VL checkpoint as a DiffusionVL (1-D positions, as it was trained)."""
    path = Path(path)
    released, vision = _read_released(path)
    base = qwenvl_config(released, vision)
    config = _diffusion_config(path, base, released, mask_token_id, position_mode="1d")
    state = {"model." + key: tensor for key, tensor in released_tensors(path).items()}
    tied = "model.lm_head.weight" if base.tie_word_embeddings else None
    return _load_strict(model_class, config, state, path, tied, dtype)


def load_released_siglip(path, model_class, mask_token_id: int | None = None, dtype: torch.dtype | None = None):
    """A DiffusionVL-Qwen2.5 (SigLIP + projector + Qwen2.5) checkpoint as a DiffusionVL.

    The SigLIP config comes from `vision_config` in config.json or from vision_config.json beside it; its layer
    count is taken from the weights, so the original tower's config (one layer more) can be given as is.
    """
    from ..modeling.composite import VisionLanguageConfig

    path = Path(path)
    released, vision = _read_released(path)
    state = {"model." + k: v for k, v in _renamed(path, RELEASED_SIGLIP_RENAMES, "DiffusionVL-Qwen2.5 (SigLIP)").items()
             if not k.startswith(DROPPED)}
    layers = {int(k.split("encoder.layers.")[1].split(".")[0]) for k in state if ".vision_tower.encoder.layers." in k}
    vision = {**vision, "model_type": "siglip_vision_model", "num_hidden_layers": max(layers) + 1, "vision_use_head": False}
    source, text = _text_config(released)
    text.update(model_type="qwen2", rope_theta=source.get("rope_theta", 1000000.0),
                tie_word_embeddings=released.get("tie_word_embeddings", False))
    base = VisionLanguageConfig(vision_config=vision, text_config=text, image_token_id=released.get("image_token_id"),
                                image_newline="model.image_newline" in state)
    config = _diffusion_config(path, base, released, mask_token_id)
    tied = "model.language_model.lm_head.weight" if base.tie_word_embeddings else None
    return _load_strict(model_class, config, state, path, tied, dtype)
