"""Paradigm shift: a tiny Qwen2.5-VL translated into a block-diffusion VLM, in both position modes."""

import pytest
import torch
from conftest import IMAGE_ID, MASK_ID, fake_image, image_prompt, tiny_qwen_vl

from diffusionvl import DiffusionVL
from diffusionvl.model import vision_inputs
from diffusionvl.modeling.noise import two_stream_layout

MODES = ["1d", "mrope"]


def translated(mode: str, block_size: int = 4):
    return DiffusionVL.from_autoregressive(tiny_qwen_vl(), mask_token_id=MASK_ID, block_size=block_size, position_mode=mode)


def training_batch():
    """Two samples, one image each (24 and 16 patches: 6 and 4 image tokens), answers supervised."""
    pixels_a, grid_a, n_a = fake_image(4, 6, seed=1)
    pixels_b, grid_b, n_b = fake_image(4, 4, seed=2)
    rows = [image_prompt([5], n_a, [7, 8, 1, 40, 41, 42, 43, 2]), image_prompt([5, 6], n_b, [9, 1, 44, 45, 2])]
    width = max(len(r) for r in rows)
    ids = torch.zeros(2, width, dtype=torch.long)
    labels = torch.full((2, width), -100)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
        answer = (row == 1).nonzero()[0, 0] + 1
        labels[i, answer : len(row)] = row[answer:]
    images = dict(pixel_values=torch.cat([pixels_a, pixels_b]), image_grid_thw=torch.cat([grid_a, grid_b]))
    return ids, labels, mask, images


@pytest.mark.parametrize("mode", MODES)
def test_loss_with_images_reaches_vision_tower_merger_and_language_model(mode):
    model = translated(mode).train()
    ids, labels, mask, images = training_batch()
    out = model(input_ids=ids, labels=labels, attention_mask=mask, generator=torch.Generator().manual_seed(0), **images)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    for part in ("visual.blocks.0.attn.qkv", "visual.merger.mlp.0", "language_model.layers.1.mlp.up_proj", "lm_head"):
        grad = next(g for name, g in grads.items() if part in name)
        assert grad is not None and grad.abs().sum() > 0, part


@pytest.mark.parametrize("mode", MODES)
def test_image_tokens_stay_out_of_the_noisy_stream_and_the_loss_matches_the_full_layout(mode):
    model = translated(mode)
    ids, labels, mask, images = training_batch()
    batch = model.add_noise(ids, labels, mask, generator=torch.Generator().manual_seed(0))
    layout = two_stream_layout(batch, cheap=True, dtype=torch.float32)
    noisy_ids = batch.clean_ids.gather(1, layout.noisy_positions)[layout.noisy_valid]
    assert IMAGE_ID not in noisy_ids.tolist()
    vision = vision_inputs(**images)
    cheap = model.diffusion_loss(batch, vision, noisy_stream="cheap").loss
    full = model.diffusion_loss(batch, vision, noisy_stream="full").loss
    assert torch.allclose(cheap, full, atol=1e-5)


def test_the_two_position_modes_feed_different_positions():
    pixels, grid, n = fake_image(4, 6, seed=9)
    prompt = image_prompt([5, 6, 7, 8], n, [7, 8])[None]  # block 0 is text only
    logits = [translated(mode)(input_ids=prompt, pixel_values=pixels, image_grid_thw=grid).logits for mode in MODES]
    assert torch.allclose(logits[0][:, :4], logits[1][:, :4], atol=1e-5)  # the text block before the image agrees
    assert not torch.allclose(logits[0][:, -1], logits[1][:, -1])  # after it, M-RoPE continues at max + 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("strategy", ["low_confidence_static", "low_confidence_dynamic"])
def test_generate_with_an_image_equals_the_reference_decoder(mode, strategy):
    model = translated(mode)
    pixels, grid, n = fake_image(4, 6, seed=3)
    prompt = image_prompt([5], n, [7, 8, 1])[None]
    options = dict(max_new_tokens=11, steps=2, remasking_strategy=strategy, confidence_threshold=0.02,
                   pixel_values=pixels, image_grid_thw=grid, return_dict_in_generate=True)
    fast = model.generate(prompt, **options)
    reference = model.generate(prompt, use_cache=False, **options)
    assert torch.equal(fast.sequences, reference.sequences) and fast.block_steps == reference.block_steps


@pytest.mark.parametrize("mode", MODES)
def test_a_batch_of_two_images_of_different_sizes_equals_each_alone(mode):
    model = translated(mode)
    pixels_a, grid_a, n_a = fake_image(4, 6, seed=4)
    pixels_b, grid_b, n_b = fake_image(4, 4, seed=5)
    prompts = [image_prompt([5, 6, 7], n_a, [9, 1]), image_prompt([5], n_b, [10, 11, 12, 1])]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding, as a processor would produce for generation
        ids[i, width - len(p) :], mask[i, width - len(p) :] = p, 1
    batch = model.generate(ids, mask, max_new_tokens=9, steps=2, pixel_values=torch.cat([pixels_a, pixels_b]),
                           image_grid_thw=torch.cat([grid_a, grid_b]))
    for i, (p, pixels, grid) in enumerate([(prompts[0], pixels_a, grid_a), (prompts[1], pixels_b, grid_b)]):
        alone = model.generate(p[None], max_new_tokens=9, steps=2, pixel_values=pixels, image_grid_thw=grid)
        assert torch.equal(batch[i, : alone.shape[1]], alone[0])


def test_the_image_changes_the_answer_distribution():
    model = translated("1d")
    pixels, grid, n = fake_image(4, 4, seed=6)
    prompt = image_prompt([5], n, [7, 1])[None]
    a = model(input_ids=prompt, pixel_values=pixels, image_grid_thw=grid).logits[0, -1]
    b = model(input_ids=prompt, pixel_values=pixels.flip(0), image_grid_thw=grid).logits[0, -1]
    assert not torch.allclose(a, b)


def test_the_released_call_names_work():
    model = translated("1d", block_size=8)
    pixels, grid, n = fake_image(4, 4, seed=7)
    out = model.generate(inputs=image_prompt([5], n, [7, 1])[None], images=pixels, image_grid_thws=grid,
                         gen_length=16, steps=8, temperature=0.0, remasking_strategy="low_confidence_static")
    assert out.shape[0] == 1 and 0 < out.shape[1] <= 16


def test_placeholders_without_matching_images_fail_clearly():
    model = translated("1d")
    pixels, grid, n = fake_image(4, 4, seed=8)
    with pytest.raises(ValueError, match="placeholders"):
        model.generate(image_prompt([5], n + 4, [1])[None], max_new_tokens=4, pixel_values=pixels, image_grid_thw=grid)
    with pytest.raises(ValueError, match="no images were given"):
        model.generate(image_prompt([5], n, [1])[None], max_new_tokens=4)
