"""logit_shift: position i - 1 predicts token i. The loss, the forward and the engine must agree on it, and at
block size 1 the model must be its AR source exactly."""

import pytest
import torch
from conftest import prompt_answer_batch, random_ids, tiny_causal_lm, wrap

from diffusionvl import DiffusionVLError
from diffusionvl.modeling.loss import autoregressive_loss
from diffusionvl.modeling.noise import two_stream_layout
from diffusionvl.modeling.streams import predicting_columns


def shifted(block_size=4, seed=0, family="qwen2"):
    return wrap(family, block_size=block_size, seed=seed, logit_shift=True)


def run(model, ids, mask=None, **options):
    return model.generate(ids, mask, return_dict_in_generate=True, **options)


def test_block_size_one_gives_the_source_models_logits(family):
    source = tiny_causal_lm(family, seed=0)
    model = wrap(family, block_size=1, seed=0, logit_shift=True)
    ids = random_ids(2, 11, seed=1)
    expected = source(input_ids=ids).logits[:, :-1]
    assert torch.allclose(model(input_ids=ids).logits[:, 1:], expected, atol=1e-5)


def test_block_size_one_with_every_answer_token_masked_is_the_per_sample_ar_loss():
    source = tiny_causal_lm(seed=0)
    model = wrap(block_size=1, seed=0, logit_shift=True, noise_eps_min=1.0, noise_eps_max=1.0)
    ids, labels = prompt_answer_batch(n=3, length=12, prompt=5)
    loss = model(input_ids=ids, labels=labels, generator=torch.Generator().manual_seed(0)).loss
    expected = autoregressive_loss(source(input_ids=ids).logits, labels, "per_sample")
    assert torch.allclose(loss, expected, atol=1e-5)


@pytest.mark.parametrize("stream", ["cheap", "full"])
def test_the_loss_reads_each_target_from_the_position_before_it(stream):
    """The noisy stream's logits are those of the inference forward on the same partly noised sequence."""
    model = shifted(block_size=4)
    ids, labels = prompt_answer_batch(n=1, length=12, prompt=3)
    batch = model.add_noise(ids, labels, generator=torch.Generator().manual_seed(3))
    layout = two_stream_layout(batch, cheap=stream == "cheap", dtype=torch.float32)
    hidden = model.model.base_model(
        input_ids=layout.input_ids, attention_mask=layout.attention_mask, position_ids=layout.index
    ).last_hidden_state
    columns = predicting_columns(layout.noisy_positions, model.block_size, model.config.logit_shift)
    got = model.get_output_embeddings()(hidden[0, columns[0]])
    for column, position in enumerate(layout.noisy_positions[0].tolist()):
        start = position // 4 * 4
        seen = batch.clean_ids.clone()
        seen[:, start : start + 4] = batch.noisy_ids[:, start : start + 4]
        assert torch.allclose(got[column], model(input_ids=seen).logits[0, position], atol=1e-5), position


def test_cheap_and_full_noisy_streams_give_the_same_shifted_loss():
    model = shifted(block_size=4)
    ids, labels = prompt_answer_batch(n=3, length=19, prompt=9)
    batch = model.add_noise(ids, labels, generator=torch.Generator().manual_seed(1))
    cheap = model.diffusion_loss(batch, noisy_stream="cheap").loss
    full = model.diffusion_loss(batch, noisy_stream="full").loss
    assert torch.allclose(cheap, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size,steps", [(1, 1), (2, 2), (4, 2), (4, 4), (8, 3)])
@pytest.mark.parametrize("prompt_length", [1, 5, 8])
@pytest.mark.parametrize("strategy", ["low_confidence_static", "low_confidence_dynamic"])
def test_fast_equals_reference(size, steps, prompt_length, strategy):
    model = shifted(block_size=size, seed=size)
    ids = random_ids(1, prompt_length, seed=steps)
    options = dict(max_new_tokens=19, steps=steps, remasking_strategy=strategy, confidence_threshold=0.02)
    fast, reference = run(model, ids, **options), run(model, ids, use_cache=False, **options)
    assert torch.equal(fast.sequences, reference.sequences)
    assert fast.block_steps == reference.block_steps


def test_fused_commit_equals_separate_commit():
    model = shifted(block_size=4)
    ids = random_ids(1, 8, seed=0)
    fused = run(model, ids, max_new_tokens=16, steps=4)
    separate = run(model, ids, max_new_tokens=16, steps=4, commit="separate")
    assert torch.equal(fused.sequences, separate.sequences) and separate.nfe > fused.nfe


def test_batch_of_different_lengths_equals_each_prompt_alone():
    model = shifted(block_size=4)
    prompts = [random_ids(n, seed=n) for n in (3, 9, 4, 12)]
    ids, mask = torch.zeros(4, 12, dtype=torch.long), torch.zeros(4, 12, dtype=torch.long)
    for row, prompt in enumerate(prompts):  # left-padded: rows whose first block holds no prompt block differ
        ids[row, 12 - len(prompt) :], mask[row, 12 - len(prompt) :] = prompt, 1
    for commit in ("fused", "separate"):
        batch = model.generate(ids, mask, max_new_tokens=13, steps=2, commit=commit)
        for row, prompt in enumerate(prompts):
            alone = model.generate(prompt[None], max_new_tokens=13, steps=2)
            assert torch.equal(batch[row, : alone.shape[1]], alone[0]), (commit, row)


def test_block_size_one_decodes_as_the_source_does_greedily():
    source = tiny_causal_lm(seed=0)
    model = wrap(block_size=1, seed=0, logit_shift=True)
    ids = random_ids(1, 7, seed=2)
    ours = model.generate(ids, max_new_tokens=12, steps=1)[0]
    never = list(model.special_tokens.never_generated)  # the engine never writes these; the source must not either
    theirs = source.generate(ids, max_new_tokens=12, do_sample=False, suppress_tokens=never, eos_token_id=None,
                             pad_token_id=0)[0, 7:]
    stop = len(ours)  # ours ends at the end-of-turn token; the source was not told to stop
    assert ours.tolist() == theirs[:stop].tolist()


def test_a_cached_forward_is_refused_with_the_reason():
    from transformers import DynamicCache

    model = shifted(block_size=4)
    cache = DynamicCache(config=model.model.config)
    model(input_ids=random_ids(1, 8, seed=0), cache=cache, use_cache=True)
    with pytest.raises(DiffusionVLError, match="logit_shift .* without a cache"):
        model(input_ids=random_ids(1, 4, seed=1), attention_mask=torch.ones(1, 12, dtype=torch.long), cache=cache)


def test_the_flag_survives_save_and_load(tmp_path):
    from diffusionvl import DiffusionVL

    model = shifted(block_size=4)
    model.save_pretrained(tmp_path)
    loaded = DiffusionVL.from_pretrained(tmp_path)
    ids = random_ids(1, 9, seed=4)
    assert loaded.config.logit_shift
    assert torch.equal(loaded.generate(ids, max_new_tokens=8), model.generate(ids, max_new_tokens=8))
