"""Modality shift: tiny SigLIP + MLP projector + Qwen2, trained AR in stage 1, translated for stage 2."""

import pytest
import torch
from conftest import EOT_ID, IMAGE_ID, MASK_ID, image_prompt, siglip_images, tiny_siglip_qwen
from transformers import AutoModelForCausalLM

from diffusionvl import DiffusionVL

TOKENS = 5  # 2 x 2 patches + the image newline


def test_stage_one_trains_only_the_projector_with_the_ar_loss():
    model = tiny_siglip_qwen().train()
    model.set_trainable(vision=False, projector=True, language=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = image_prompt([5], TOKENS, [7, 8, 40, 41, EOT_ID])[None]
    labels = ids.clone()
    labels[:, : TOKENS + 3] = -100
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(input_ids=ids, labels=labels, pixel_values=siglip_images(1)).loss
    loss.backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("projector.", "image_newline")) for k in changed)
    assert {"projector.0.weight", "projector.2.weight"} <= changed


def test_stage_two_diffusion_loss_reaches_encoder_projector_and_language_model():
    model = DiffusionVL.from_autoregressive(tiny_siglip_qwen(), mask_token_id=MASK_ID, block_size=4).train()
    ids = torch.stack([image_prompt([5], TOKENS, [7, 1, 40, 41, 42, EOT_ID]), image_prompt([6], TOKENS, [8, 1, 43, 44, EOT_ID, 0])])
    labels = ids.clone()
    labels[:, : TOKENS + 3] = -100
    mask = (ids != 0).long()
    out = model(input_ids=ids, labels=labels, attention_mask=mask, pixel_values=siglip_images(2),
                generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    for part in ("vision_tower.encoder.layers.0", "projector.0", "image_newline", "language_model.model.layers.1"):
        grad = next(p.grad for name, p in model.named_parameters() if part in name)
        assert grad is not None and grad.abs().sum() > 0, part


@pytest.mark.parametrize("strategy", ["low_confidence_static", "low_confidence_dynamic"])
def test_generate_with_an_image_equals_the_reference_and_batches_equal_singles(strategy):
    model = DiffusionVL.from_autoregressive(tiny_siglip_qwen(), mask_token_id=MASK_ID, block_size=4)
    prompts = [image_prompt([5, 6, 7], TOKENS, [9, 1]), image_prompt([5], TOKENS, [10, 11, 12, 13, 1])]
    images = siglip_images(2, seed=4)
    width = max(len(p) for p in prompts)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = p, 1
    options = dict(max_new_tokens=9, steps=2, remasking_strategy=strategy, confidence_threshold=0.02)
    fast = model.generate(ids, mask, pixel_values=images, **options)
    reference = model.generate(ids, mask, pixel_values=images, use_cache=False, **options)
    assert torch.equal(fast, reference)
    for i, p in enumerate(prompts):
        alone = model.generate(p[None], pixel_values=images[i : i + 1], **options)
        assert torch.equal(fast[i, : alone.shape[1]], alone[0])


def test_composite_round_trips_through_the_auto_class(tmp_path):
    model = DiffusionVL.from_autoregressive(tiny_siglip_qwen(), mask_token_id=MASK_ID, block_size=4)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    prompt, images = image_prompt([5], TOKENS, [7, 1])[None], siglip_images(1, seed=5)
    assert torch.equal(loaded.generate(prompt, pixel_values=images, max_new_tokens=8),
                       model.generate(prompt, pixel_values=images, max_new_tokens=8))


def test_placeholder_count_must_match_the_images():
    model = tiny_siglip_qwen()
    with pytest.raises(ValueError, match="placeholders"):
        model(input_ids=image_prompt([5], TOKENS + 2, [1])[None], pixel_values=siglip_images(1))
    assert IMAGE_ID == model.config.image_token_id


def test_released_siglip_layout_loads_every_tensor_and_generates_the_same_tokens(tmp_path):
    from released import write_released_siglip

    model = DiffusionVL.from_autoregressive(tiny_siglip_qwen(), mask_token_id=MASK_ID, block_size=4)
    write_released_siglip(model, tmp_path)
    loaded = DiffusionVL.from_pretrained(tmp_path)
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert sorted(ours) == sorted(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    prompt, images = image_prompt([5], TOKENS, [7, 1])[None], siglip_images(1, seed=6)
    out = loaded.generate(inputs=prompt, images=images, gen_length=8, steps=4, temperature=0.0,
                          remasking_strategy="low_confidence_static")
    assert torch.equal(out, model.generate(prompt, pixel_values=images, max_new_tokens=8, steps=4))


def test_the_qwen_vit_can_be_the_encoder_with_images_of_different_sizes():
    from conftest import fake_image, tiny_vit_qwen

    model = DiffusionVL.from_autoregressive(tiny_vit_qwen(), mask_token_id=MASK_ID, block_size=4)
    pixels_a, grid_a, n_a = fake_image(4, 6, seed=1)
    pixels_b, grid_b, n_b = fake_image(4, 4, seed=2)
    prompts = [image_prompt([5], n_a + 1, [9, 1]), image_prompt([5, 6], n_b + 1, [10, 1])]  # + image newline
    width = max(len(p) for p in prompts)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = p, 1
    images = dict(pixel_values=torch.cat([pixels_a, pixels_b]), image_grid_thw=torch.cat([grid_a, grid_b]))
    options = dict(max_new_tokens=7, steps=2)
    fast = model.generate(ids, mask, **images, **options)
    assert torch.equal(fast, model.generate(ids, mask, use_cache=False, **images, **options))
    alone = model.generate(prompts[1][None], pixel_values=pixels_b, image_grid_thw=grid_b, **options)
    assert torch.equal(fast[1, : alone.shape[1]], alone[0])
    labels = ids.clone()
    labels[:, :-2] = -100
    loss = model.train()(input_ids=ids, labels=labels, attention_mask=mask, **images).loss
    loss.backward()
    assert next(p.grad for n, p in model.named_parameters() if "vision_tower.blocks.0" in n).abs().sum() > 0
