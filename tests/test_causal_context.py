"""Causal context (`context_attention="causal"`): clean tokens attend token-causally, as the AR source does; the
block being denoised still attends bidirectionally within itself. Exact checks against the source and between
the decoders."""

import pytest
import torch
from conftest import EOT_ID, MASK_ID, prompt_answer_batch, random_ids, tiny_causal_lm, wrap

from diffusionvl import DiffusionVL
from diffusionvl.modeling.masks import CLEAN, NOISY, block_causal_mask, block_diffusion_rule
from diffusionvl.modeling.noise import two_stream_layout

CAUSAL = dict(context_attention="causal")


def run(model, ids, mask=None, **options):
    return model.generate(ids, mask, return_dict_in_generate=True, **options)


def test_the_rule_lets_clean_tokens_attend_causally_and_the_noisy_block_bidirectionally():
    # one row: clean positions 0..3 (two blocks of 2), then the noisy copy of block 1 (positions 2, 3)
    position = torch.tensor([[0, 1, 2, 3, 2, 3]])
    stream = torch.tensor([[CLEAN] * 4 + [NOISY] * 2])
    block, valid = position // 2, torch.ones_like(position, dtype=torch.bool)
    allowed = block_diffusion_rule(block, stream, block, stream, valid, position, position)[0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],  # clean: token-causal (block-causal would let 0 see 1)
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 1],  # noisy block 1: clean blocks before it, and itself both ways
        [1, 1, 0, 0, 1, 1],
    ]
    inference = block_causal_mask(position[:, :4], valid[:, :4], position[:, :4], valid[:, :4], 2, torch.float32,
                                  causal_context=True, noisy=2)[0, 0] == 0
    assert inference.int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]


@pytest.mark.parametrize("causal", [True, False])
def test_a_verify_forward_keeps_its_noisy_copies_apart_under_either_context(causal):
    """A speculative verify forward after two cached tokens (block 0): block 1 as clean rows (places 2, 3), a
    noisy copy of it (segment 1, same places) and block 2 as masks (places 4, 5). The copy sees the cache and
    itself, not block 1's clean rows; the masks see the cache and the clean rows, not the copy."""
    places = torch.tensor([[0, 1, 2, 3, 2, 3, 4, 5]])
    valid = torch.ones_like(places, dtype=torch.bool)
    mask = block_causal_mask(places[:, 2:], valid[:, 2:], places, valid, 2, torch.float32, causal_context=causal,
                             noisy=4, segments=torch.tensor([0, 0, 1, 1, 0, 0]))[0, 0] == 0
    clean = [[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]] if causal else [[1, 1, 1, 1, 0, 0, 0, 0]] * 2
    assert mask.int().tolist() == clean + [[1, 1, 0, 0, 1, 1, 0, 0]] * 2 + [[1, 1, 1, 1, 0, 0, 1, 1]] * 2


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_an_untrained_causal_translation_with_logit_shift_is_its_source(family):
    """Clean-stream logits equal the source's, shifted by one (index i holds the prediction of token i)."""
    source = tiny_causal_lm(family, seed=3)
    model = DiffusionVL.from_autoregressive(source, mask_token_id=MASK_ID, block_size=4, logit_shift=True, **CAUSAL)
    ids = random_ids(2, 11, seed=4)
    with torch.no_grad():
        ours, theirs = model(input_ids=ids).logits, source(input_ids=ids).logits
    assert (ours[:, 1:] - theirs[:, :-1]).abs().max() <= 1e-4
    block_causal = DiffusionVL.from_autoregressive(tiny_causal_lm(family, seed=3), mask_token_id=MASK_ID,
                                                   block_size=4, logit_shift=True)
    with torch.no_grad():  # the control: block-causal attention is not the source
        assert (block_causal(input_ids=ids).logits[:, 1:] - theirs[:, :-1]).abs().max() > 1e-3


def test_block_size_one_greedy_decoding_is_the_sources_greedy_decoding():
    source = tiny_causal_lm("qwen2", seed=5)
    model = DiffusionVL.from_autoregressive(source, mask_token_id=MASK_ID, block_size=1, logit_shift=True, **CAUSAL)
    never = list(model.special_tokens.never_generated)
    for seed in range(3):
        ids = random_ids(1, 6, seed=seed)
        sequence = ids[0].tolist()
        with torch.no_grad():
            for _ in range(12):  # the source's greedy decode, with the same ids ruled out (mask, pad)
                logits = source(input_ids=torch.tensor([sequence])).logits[0, -1]
                logits[never] = float("-inf")
                sequence.append(int(logits.argmax()))
                if sequence[-1] == EOT_ID:
                    break
        out = model.generate(ids, max_new_tokens=12, steps=1)[0]
        assert out[out != model.special_tokens.pad].tolist() == sequence[6:], seed


@pytest.mark.parametrize("size,steps", [(2, 1), (4, 2), (4, 4), (8, 3)])
@pytest.mark.parametrize("logit_shift", [False, True])
@pytest.mark.parametrize("strategy", ["low_confidence_static", "low_confidence_dynamic"])
def test_cached_equals_the_reference_and_fused_equals_separate(size, steps, logit_shift, strategy):
    model = wrap(block_size=size, seed=size, logit_shift=logit_shift, **CAUSAL)
    options = dict(max_new_tokens=15, steps=steps, remasking_strategy=strategy, confidence_threshold=0.02)
    for length in (3, size, 2 * size + 1):
        ids = random_ids(1, length, seed=length)
        fast, reference = run(model, ids, **options), run(model, ids, use_cache=False, **options)
        separate = run(model, ids, commit="separate", **options)
        assert torch.equal(fast.sequences, reference.sequences), length
        assert torch.equal(fast.sequences, separate.sequences) and fast.block_steps == reference.block_steps


@pytest.mark.parametrize("logit_shift", [False, True])
def test_a_batch_equals_each_prompt_alone(logit_shift):
    model = wrap(block_size=4, seed=2, logit_shift=logit_shift, **CAUSAL)
    prompts = [random_ids(n, seed=n) for n in (3, 9, 4, 12)]
    ids = torch.zeros(4, 12, dtype=torch.long)
    mask = torch.zeros(4, 12, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)], mask[row, : len(prompt)] = prompt, 1
    batch = model.generate(ids, mask, max_new_tokens=13, steps=2)
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], max_new_tokens=13, steps=2)
        assert torch.equal(batch[row, : alone.shape[1]], alone[0])


def test_the_training_loss_uses_causal_context_and_the_cheap_stream_still_equals_the_full_one():
    ids, labels = prompt_answer_batch(n=2, length=16, prompt=6)
    losses = {}
    for context in ("block_causal", "causal"):
        for stream in ("cheap", "full"):
            model = wrap(block_size=4, seed=1, context_attention=context, noisy_stream=stream)
            out = model(ids, labels=labels, generator=torch.Generator().manual_seed(0))
            losses[context, stream] = out.loss.item()
    assert losses["causal", "cheap"] == pytest.approx(losses["causal", "full"], abs=1e-5)
    assert abs(losses["causal", "cheap"] - losses["block_causal", "cheap"]) > 1e-4
    model = wrap(block_size=4, **CAUSAL)
    batch = model.add_noise(ids, labels, generator=torch.Generator().manual_seed(0))
    layout = two_stream_layout(batch, cheap=True, dtype=torch.float32, causal_context=True)
    clean = layout.attention_mask[0, 0, -16:, -16:] == 0  # clean queries over clean keys: lower-triangular
    assert torch.equal(clean, torch.ones(16, 16, dtype=torch.bool).tril())


def test_the_option_survives_save_and_load_and_convert_takes_it(tmp_path):
    model = wrap(block_size=4, **CAUSAL)
    model.save_pretrained(tmp_path / "m")
    assert DiffusionVL.from_pretrained(tmp_path / "m").config.context_attention == "causal"
    with pytest.raises(Exception, match="context_attention"):
        wrap(block_size=4, context_attention="bidirectional")


def test_convert_takes_the_option_from_the_command_line(probe_checkpoints, tmp_path, capsys):
    from diffusionvl import cli

    cli.main(["convert", str(probe_checkpoints.ar_text), str(tmp_path / "dst"), "--block-size", "4",
              "--logit-shift", "--context-attention", "causal"])
    assert "logit shift, causal context" in capsys.readouterr().out
    assert DiffusionVL.from_pretrained(tmp_path / "dst").config.context_attention == "causal"


def test_the_causal_mode_is_decoding_in_blocks_of_one():
    """`inference.causal_model` (transformers' generate of the wrapped base) writes what the block decoder writes
    with blocks of one token, for the same weights trained with blocks of four."""
    from diffusionvl.inference import causal_model

    mode = causal_model(wrap(block_size=4, seed=7, logit_shift=True, **CAUSAL))
    single = wrap(block_size=1, seed=7, logit_shift=True, **CAUSAL)
    for seed in range(3):
        ids = random_ids(1, 5 + seed, seed=seed)
        with torch.no_grad():
            theirs = mode.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=EOT_ID, pad_token_id=EOT_ID)
        ours = single.generate(ids, max_new_tokens=10, steps=1)[0]
        assert theirs[0, ids.shape[1]:].tolist() == ours[ours != single.special_tokens.pad].tolist(), seed


@pytest.mark.parametrize("options", [dict(logit_shift=True), dict(logit_shift=False, **CAUSAL)])
def test_a_model_without_a_causal_mode_is_refused(options):
    from diffusionvl.errors import DiffusionVLError
    from diffusionvl.inference import causal_model

    with pytest.raises(DiffusionVLError, match="only a model translated with context_attention='causal'"):
        causal_model(wrap(**options))


@pytest.mark.parametrize("pad", [EOT_ID, 0])
def test_an_answer_row_keeps_its_end_of_turn_whether_or_not_pad_is_that_id(pad):
    """`DecodingOutput.rows`: a row ends at its first end-of-turn, kept, as an AR answer's row does (SmolLM2's pad
    is its end-of-turn; MiniVL's is a token of its own), and a row cut without one (a stop string, the length
    limit) gains none from the pad after it."""
    from diffusionvl.decoding.outputs import DecodingOutput

    rows = [[5, 6, EOT_ID], [7, 8, 9, 10, 11], [EOT_ID], [7, 8]]
    out = DecodingOutput.from_rows(rows, 1, pad, "cpu")
    assert out.sequences[3].tolist() == [7, 8, pad, pad, pad]
    assert out.rows == [[5, 6, EOT_ID], [7, 8, 9, 10, 11], [EOT_ID], [7, 8]]
