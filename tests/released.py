"""Writes tiny checkpoints in the layouts of the original DiffusionVL release, from a translated model.

The reverse of `diffusionvl.checkpoints.released`, written independently: names as SPEC §4 lists them.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "hidden_act", "eos_token_id",
             "pad_token_id")


def released_names(model) -> dict:
    """The translated model's tensors under the released names (lm_head only when untied)."""
    tied = model.config.base_config.tie_word_embeddings
    out = {}
    for key, tensor in model.model.state_dict().items():
        if key.startswith("model.visual.merger."):
            name = "model.mm_projector.merger." + key[len("model.visual.merger."):]
        elif key.startswith("model.visual."):
            name = "model.vision_tower.vision_tower." + key[len("model.visual."):]
        elif key.startswith("model.language_model."):
            name = "model." + key[len("model.language_model."):]
        elif key == "lm_head.weight":
            if tied:
                continue
            name = key
        else:
            raise AssertionError(f"unmapped weight {key}")
        out[name] = tensor.contiguous().clone()
    return out


def released_config(model, nested_vision: bool = True) -> dict:
    base = model.config.base_config
    text = base.text_config.to_dict()
    config = {k: text[k] for k in TEXT_KEYS}
    config.update(
        model_type="diffusionvl_qwenvl", architectures=["DiffusionVLQwenVLForCausalLM"],
        text_config=dict(config), bd3lm_block_size=model.config.block_size, enable_bd3lm=True,
        tie_word_embeddings=base.tie_word_embeddings, image_token_id=base.image_token_id,
        rope_theta=text["rope_parameters"]["rope_theta"],
        rope_scaling={"type": "mrope", "mrope_section": text["rope_parameters"].get("mrope_section")},
        mask_token_id=model.config.mask_token_id,  # the tiny vocabulary has no row 151671
    )
    if nested_vision:
        config["vision_config"] = base.vision_config.to_dict()
    return config


def write_released(model, path: Path, shards: int = 1) -> None:
    """The DiffusionVL-Qwen2.5VL layout: safetensors (sharded with an index when shards > 1) + config.json."""
    tensors = released_names(model)
    names = sorted(tensors)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(released_config(model)))
    if shards == 1:
        save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
        return
    weight_map = {}
    for shard in range(shards):
        file = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[shard::shards]}
        save_file(part, path / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def write_split(model, path: Path) -> None:
    """The conversion script's split layout: text-only model.safetensors, vision tower, projector, vision config."""
    tensors = released_names(model)
    path.mkdir(parents=True, exist_ok=True)
    tower, projector, text = {}, {}, {}
    for name, tensor in tensors.items():
        if name.startswith("model.mm_projector.merger."):
            projector[name[len("model.mm_projector.merger."):]] = tensor
        elif name.startswith("model.vision_tower.vision_tower."):
            tower[name[len("model.vision_tower.vision_tower."):]] = tensor
        else:
            text[name] = tensor
    save_file(text, path / "model.safetensors", metadata={"format": "pt"})
    save_file(tower, path / "vision_tower.safetensors", metadata={"format": "pt"})
    save_file(projector, path / "projector.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(released_config(model, nested_vision=False)))
    (path / "vision_config.json").write_text(json.dumps(model.config.base_config.vision_config.to_dict()))


def write_released_siglip(model, path: Path, extra_tower_layer: bool = True) -> None:
    """The DiffusionVL-Qwen2.5 (SigLIP) layout from a translated `VisionLanguageModel`.

    `extra_tower_layer`: the vision_config names one SigLIP layer more than the weights hold, as the original
    tower's config does (the release drops its last layer). The unused post-layernorm is written too.
    """
    composite = model.model
    tensors = {}
    for key, tensor in composite.state_dict().items():
        if key.startswith("vision_tower."):
            name = "model.vision_tower.vision_tower.vision_model." + key[len("vision_tower."):]
        elif key.startswith("projector."):
            name = "model.mm_projector." + key[len("projector."):]
        elif key == "image_newline":
            name = "model.image_newline"
        elif key.startswith("language_model.model."):
            name = "model." + key[len("language_model.model."):]
        elif key == "language_model.lm_head.weight":
            if composite.config.tie_word_embeddings:
                continue
            name = "lm_head.weight"
        else:
            raise AssertionError(f"unmapped weight {key}")
        tensors[name] = tensor.contiguous().clone()
    hidden = composite.config.vision_config.hidden_size
    tensors["model.vision_tower.vision_tower.vision_model.post_layernorm.weight"] = torch.ones(hidden)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    vision = composite.config.vision_config.to_dict()
    vision["num_hidden_layers"] += int(extra_tower_layer)
    text = composite.config.text_config.to_dict()
    config = {k: text[k] for k in TEXT_KEYS}
    config.update(model_type="diffusionvl_qwen", vision_config=vision, image_token_id=composite.config.image_token_id,
                  bd3lm_block_size=model.config.block_size, tie_word_embeddings=composite.config.tie_word_embeddings,
                  rope_theta=text["rope_parameters"]["rope_theta"], mask_token_id=model.config.mask_token_id)
    (path / "config.json").write_text(json.dumps(config))
