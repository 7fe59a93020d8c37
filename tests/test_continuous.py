"""Continuous batching in the engine: rows join a running decode at a block boundary and leave when done.

A row admitted mid-decode (its prompt prefilled into a widened layout, its first block lined up with the
others') must give exactly the tokens it gets alone, and the rows already running must not notice it.
"""

import pytest
import torch
from conftest import random_ids, toy_prompt, wrap

from diffusionvl.decoding.config import DecodingConfig
from diffusionvl.decoding.engine import BlockDecoder
from diffusionvl.decoding.prompts import build_prompts

pytestmark = pytest.mark.usefixtures("one_thread")


def prompts_of(model, *rows: torch.Tensor, vision=None):
    """Prompts of unpadded rows of ids (right-padded into one batch, the mask marking each row's tokens)."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for index, row in enumerate(rows):
        ids[index, : len(row)], valid[index, : len(row)] = row, True
    return build_prompts(model, ids, valid, vision)


@torch.no_grad()
def staggered(model, config, waves: list[tuple[int, list[torch.Tensor]]], limits=None,
              verifier=None) -> dict[int, list[int]]:
    """Run a decode where wave k's prompts are admitted before block `start_k`; returns each row's tokens."""
    decoder = BlockDecoder(model, config, verifier=verifier)
    outputs, block = {}, 0
    waves = sorted(waves, key=lambda wave: wave[0])
    while waves or len(decoder.batch):
        while waves and waves[0][0] <= block:
            _, rows = waves.pop(0)
            checked = None if verifier is None else prompts_of(verifier, *rows)
            decoder.admit(prompts_of(model, *rows), max_new_tokens=limits and [limits.pop(0) for _ in rows],
                          checked=checked)
        if len(decoder.batch):
            for row, _ in decoder.step():
                if row.finished:
                    outputs[row.id] = list(row.tokens)
        block += 1
    return outputs


def alone(model, prompt: torch.Tensor, config: DecodingConfig, max_new_tokens=None, verifier=None) -> list[int]:
    options = {} if max_new_tokens is None else dict(max_new_tokens=max_new_tokens)
    out = model.generate(prompt[None], generation_config=config, verifier=verifier, **options)[0]
    return out[out != model.special_tokens.pad].tolist()


@pytest.mark.parametrize("commit", ["fused", "separate"])
@pytest.mark.parametrize("strategy", ["low_confidence_static", "low_confidence_dynamic"])
@pytest.mark.parametrize("logit_shift", [False, True])
@pytest.mark.parametrize("context", ["block_causal", "causal"])
def test_rows_admitted_mid_decode_equal_each_row_alone(commit, strategy, logit_shift, context):
    model = wrap(block_size=4, seed=1, logit_shift=logit_shift, context_attention=context)
    config = DecodingConfig(max_new_tokens=21, steps=3, remasking_strategy=strategy, confidence_threshold=0.02,
                            commit=commit)
    first = [random_ids(3, seed=1), random_ids(9, seed=2)]
    # block 2: a prompt longer than every column so far (the layout widens), a short one and one of whole blocks
    second = [random_ids(23, seed=3), random_ids(2, seed=4), random_ids(8, seed=5)]
    third = [random_ids(6, seed=6)]
    outputs = staggered(model, config, [(0, first), (2, second), (4, third)])
    for row, prompt in enumerate(first + second + third):
        assert outputs[row] == alone(model, prompt, config), row


def test_a_row_admitted_into_a_fresh_decode_before_any_step_equals_alone():
    model = wrap(block_size=4, seed=2)
    config = DecodingConfig(max_new_tokens=13, steps=2)
    rows = [random_ids(10, seed=7), random_ids(17, seed=8)]
    outputs = staggered(model, config, [(0, rows[:1]), (0, rows[1:])])
    assert [outputs[0], outputs[1]] == [alone(model, row, config) for row in rows]


def test_joining_rows_do_not_disturb_running_rows_on_the_trained_model(trained):
    config = DecodingConfig(max_new_tokens=32, steps=4, remasking_strategy="low_confidence_dynamic")
    prompts = [toy_prompt([10, 11, 12, 13, 14]), toy_prompt([3, 4]), toy_prompt(list(range(20, 33))),
               toy_prompt([5, 6, 7])]
    outputs = staggered(trained, config, [(0, prompts[:1]), (1, prompts[1:3]), (3, prompts[3:])])
    assert [outputs[row] for row in range(4)] == [alone(trained, p, config) for p in prompts]
    assert outputs[0] == [40, 41, 42, 43, 44, trained.special_tokens.eot]


def test_each_row_keeps_its_own_length_limit():
    model = wrap(block_size=4, seed=3)
    config = DecodingConfig(max_new_tokens=32, steps=4)
    prompts = [random_ids(5, seed=9), random_ids(7, seed=10), random_ids(4, seed=11)]
    outputs = staggered(model, config, [(0, prompts[:2]), (1, prompts[2:])], limits=[3, 11, 6])
    for row, limit in enumerate([3, 11, 6]):
        assert outputs[row] == alone(model, prompts[row], config, max_new_tokens=limit)


@torch.no_grad()
def test_a_cancelled_row_leaves_at_the_end_of_its_block_and_the_others_go_on():
    model = wrap(block_size=4, seed=4)
    config = DecodingConfig(max_new_tokens=24, steps=2)
    prompts = [random_ids(6, seed=12), random_ids(5, seed=13)]
    decoder = BlockDecoder(model, config)
    first, second = decoder.admit(prompts_of(model, *prompts))
    decoder.step()
    decoder.cancel(0)
    updates = decoder.step()
    assert [(row.id, row.finish_reason) for row, _ in updates] == [(0, "cancelled"), (1, None)]
    assert [row.id for row in decoder.batch.rows] == [1]
    assert len(first.tokens) == 2 + 4  # its first block held 2 prompt tokens
    while len(decoder.batch):
        decoder.step()
    assert second.tokens == alone(model, prompts[1], config)


@torch.no_grad()
def test_a_long_running_decode_drops_the_padding_of_rows_that_left():
    """Rows keep joining and leaving: the layout must not grow with the decode's age."""
    model = wrap(block_size=4, seed=5)
    config = DecodingConfig(max_new_tokens=8, steps=4)
    decoder = BlockDecoder(model, config)
    widths = []
    for wave in range(12):
        decoder.admit(prompts_of(model, random_ids(5, seed=wave)))
        decoder.step()
        widths.append(decoder.column)
    assert max(widths) <= 3 * 4, widths  # two blocks of an answer plus a prompt block, whatever the decode's age
    assert decoder.cache.get_seq_length() <= decoder.column


def test_the_observer_sees_every_denoising_step():
    model = wrap(block_size=4, seed=6)
    config = DecodingConfig(max_new_tokens=8, steps=4)
    seen = []
    decoder = BlockDecoder(model, config,
                           observer=lambda rows, step, block, masked: seen.append((step, masked.sum(1).tolist())))
    with torch.no_grad():
        decoder.admit(prompts_of(model, random_ids(4, seed=1)))
        decoder.run()
    assert seen == [(0, [3]), (1, [2]), (2, [1]), (3, [0]), (0, [3]), (1, [2]), (2, [1]), (3, [0])]
    assert decoder.nfe == len(seen)


def test_image_rows_admitted_mid_decode_equal_each_row_alone():
    """The shipped MiniVL model: image features spliced into prompts and M-RoPE positions survive the join."""
    from diffusionvl.inference import chat_inputs, load
    from diffusionvl.minivl.generator import generate
    from diffusionvl.model import VisionInputs

    model, processor = load("minivl-dvlm")
    samples = generate("count", "test", 3, 4, 112) + generate("caption", "test", 3, 2, 112)
    config = DecodingConfig(max_new_tokens=24, steps=8, remasking_strategy="low_confidence_dynamic")
    decoder, finished = BlockDecoder(model, config), []
    with torch.no_grad():
        for index, sample in enumerate(samples):
            inputs = chat_inputs(processor, [sample.question], [[sample.image]])
            ids = inputs["input_ids"]
            vision = VisionInputs(inputs["pixel_values"], inputs["image_grid_thw"])
            decoder.admit(build_prompts(model, ids, torch.ones_like(ids, dtype=torch.bool), vision))
            if index % 2:  # two rows join before each block
                finished += [row for row, _ in decoder.step() if row.finished]
        while len(decoder.batch):
            finished += [row for row, _ in decoder.step() if row.finished]
    outputs = [row.tokens for row in sorted(finished, key=lambda row: row.id)]
    for sample, output in zip(samples, outputs):
        single = model.generate(**chat_inputs(processor, [sample.question], [[sample.image]]), generation_config=config)
        assert output == single[0][single[0] != model.special_tokens.pad].tolist()


def test_a_long_answer_joining_a_fresh_decode_with_a_long_prompt_fits_the_cache():
    """The first batch's prompt is still pending (it rides along with the first step); a row joining then with a
    long answer needs room after all of it."""
    model = wrap(block_size=4, seed=7)
    config = DecodingConfig(max_new_tokens=4, steps=4)
    first, second = random_ids(41, seed=14), random_ids(3, seed=15)
    outputs = staggered(model, config, [(0, [first]), (0, [second])], limits=[4, 60])
    assert outputs[0] == alone(model, first, config) and outputs[1] == alone(model, second, config, 60)


@pytest.mark.parametrize("options, reason, tokens", [
    (dict(max_new_tokens=32), "stop", [40, 41, 42, 43, 44, 2]),
    (dict(max_new_tokens=3), "length", [40, 41, 42]),
    (dict(max_new_tokens=32, stop_strings=("w39",)), "stop_string", [40, 41, 42]),  # id 42 is "w39"
])
def test_each_row_says_why_it_ended_and_the_reference_agrees(trained, options, reason, tokens):
    """The engine sets a row's finish reason once; the reference decoder ends rows by the same rule."""
    from conftest import tiny_tokenizer

    prompts = [toy_prompt([10, 11, 12, 13, 14]), toy_prompt([3, 4, 5, 6, 7, 8, 9])]
    ids = torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True)
    valid = torch.nn.utils.rnn.pad_sequence([torch.ones_like(p) for p in prompts], batch_first=True)
    outputs = [trained.generate(ids, valid, steps=4, use_cache=cached, tokenizer=tiny_tokenizer(),
                                return_dict_in_generate=True, **options) for cached in (True, False)]
    fast, slow = outputs
    assert fast.finish_reasons == slow.finish_reasons and torch.equal(fast.sequences, slow.sequences)
    assert fast.finish_reasons[0] == reason
    assert fast.sequences[0][fast.sequences[0] != trained.special_tokens.pad].tolist() == tokens
