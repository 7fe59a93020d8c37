"""Loading the released DiffusionVL-Qwen2.5VL layouts, and saving/loading translated VLMs."""

import json

import pytest
import torch
from conftest import MASK_ID, fake_image, image_prompt, tiny_qwen_vl
from released import released_names, write_released, write_split
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from diffusionvl import CheckpointLayoutError, DiffusionVL


def translated(tied: bool, mode: str = "1d"):
    vl = tiny_qwen_vl()
    if tied:
        vl.config.tie_word_embeddings = True
        vl.config.text_config.tie_word_embeddings = True
        vl.tie_weights()
    return DiffusionVL.from_autoregressive(vl, mask_token_id=MASK_ID, block_size=4, position_mode=mode)


def assert_same_model(loaded, model):
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    pixels, grid, n = fake_image(4, 6, seed=2)
    prompt = image_prompt([5], n, [7, 8, 1])[None]
    options = dict(max_new_tokens=10, steps=2, pixel_values=pixels, image_grid_thw=grid)
    assert torch.equal(loaded.generate(prompt, **options), model.generate(prompt, **options))


@pytest.mark.parametrize("tied,shards", [(True, 1), (False, 1), (False, 3)])
def test_released_layout_loads_every_tensor_and_generates_the_same_tokens(tmp_path, tied, shards):
    model = translated(tied)
    write_released(model, tmp_path, shards=shards)
    loaded = DiffusionVL.from_pretrained(tmp_path)
    assert loaded.config.position_mode == "1d" and loaded.config.block_size == 4
    assert (loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight) == tied
    assert_same_model(loaded, model)


def test_split_layout_of_the_conversion_script_loads(tmp_path):
    model = translated(tied=False)
    write_split(model, tmp_path)
    assert_same_model(DiffusionVL.from_pretrained(tmp_path), model)


def test_the_seed_call_works_on_a_released_checkpoint(tmp_path):
    write_released(translated(tied=True), tmp_path)
    model = DiffusionVL.from_pretrained(tmp_path)
    pixels, grid, n = fake_image(4, 4, seed=3)
    out = model.generate(inputs=image_prompt([5], n, [7, 1])[None], images=pixels, image_grid_thws=grid,
                         gen_length=12, steps=4, temperature=0.0, remasking_strategy="low_confidence_static")
    assert out.dtype == torch.long and 0 < out.shape[1] <= 12


def test_a_missing_tensor_in_a_released_checkpoint_fails_loudly(tmp_path):
    write_released(translated(tied=False), tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors.pop("model.mm_projector.merger.mlp.2.weight")
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointLayoutError, match="merger.mlp.2.weight"):
        DiffusionVL.from_pretrained(tmp_path)


def test_a_foreign_tensor_name_fails_loudly(tmp_path):
    model = translated(tied=False)
    write_released(model, tmp_path)
    tensors = released_names(model)
    tensors["model.vision_resampler.weight"] = torch.zeros(2)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointLayoutError, match="vision_resampler"):
        DiffusionVL.from_pretrained(tmp_path)


def test_a_released_config_without_vision_config_fails_clearly(tmp_path):
    write_released(translated(tied=False), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["vision_config"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointLayoutError, match="vision_config"):
        DiffusionVL.from_pretrained(tmp_path)


@pytest.mark.parametrize("mode", ["1d", "mrope"])
def test_translated_vlm_round_trips_through_the_auto_class(tmp_path, mode):
    model = translated(tied=False, mode=mode)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded, DiffusionVL) and loaded.config.position_mode == mode
    assert_same_model(loaded, model)
