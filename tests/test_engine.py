"""Block decoding: the fast engine against the reference decoder, batching, commit modes, streaming, errors."""

import threading

import pytest
import torch
from conftest import EOT_ID, MASK_ID, random_ids, tiny_tokenizer, toy_prompt, wrap
from transformers import TextIteratorStreamer

SIZES = [(2, 1), (2, 2), (4, 2), (4, 4), (8, 3), (8, 8)]  # (block size, steps)


def run(model, ids, mask=None, **options):
    return model.generate(ids, mask, return_dict_in_generate=True, **options)


@pytest.mark.parametrize("size,steps", SIZES)
@pytest.mark.parametrize("prompt_length", [5, 8])
@pytest.mark.parametrize("strategy", ["low_confidence_static", "low_confidence_dynamic"])
def test_fast_equals_reference_on_a_random_model(size, steps, prompt_length, strategy):
    model = wrap(block_size=size, seed=size)
    ids = torch.randint(3, 60, (1, prompt_length), generator=torch.Generator().manual_seed(steps))
    options = dict(max_new_tokens=19, steps=steps, remasking_strategy=strategy, confidence_threshold=0.02)
    fast, reference = run(model, ids, **options), run(model, ids, use_cache=False, **options)
    assert torch.equal(fast.sequences, reference.sequences)
    assert fast.block_steps == reference.block_steps


def test_the_static_quota_spreads_the_block_size_so_a_first_block_with_prompt_tokens_ends_sooner():
    out = run(wrap(block_size=4), random_ids(1, 5, seed=7), max_new_tokens=7, steps=3)
    assert out.block_steps[0] == [2, 3]  # 3 masks: quota [2, 1, 1] commits 2 then 1; a full block takes 3 steps


@pytest.mark.parametrize("strategy", ["low_confidence_static", "low_confidence_dynamic"])
def test_fast_equals_reference_for_every_prompt_remainder_and_step_count(strategy):
    model = wrap(block_size=4, seed=3)
    for length in range(1, 9):
        ids = random_ids(1, length, seed=length)
        for steps in range(1, 5):
            options = dict(max_new_tokens=6, steps=steps, remasking_strategy=strategy, confidence_threshold=0.02)
            fast, reference = run(model, ids, **options), run(model, ids, use_cache=False, **options)
            assert torch.equal(fast.sequences, reference.sequences), (length, steps)
            assert fast.block_steps == reference.block_steps, (length, steps)


@pytest.mark.parametrize("strategy", ["low_confidence_static", "low_confidence_dynamic", "threshold"])
def test_fast_equals_reference_on_the_trained_model(trained, strategy):
    for tokens in ([5, 6, 7], [10, 11, 12, 13, 14, 15, 16, 17], [3, 4]):
        options = dict(max_new_tokens=24, steps=4, remasking_strategy=strategy)
        fast = run(trained, toy_prompt(tokens), **options)
        reference = run(trained, toy_prompt(tokens), use_cache=False, **options)
        assert torch.equal(fast.sequences, reference.sequences)


def test_trained_model_answers_and_stops_at_end_of_turn(trained):
    out = trained.generate(toy_prompt([10, 11, 12, 13, 14]), max_new_tokens=32, steps=4)
    assert out[0].tolist() == [40, 41, 42, 43, 44, EOT_ID]


def test_fused_commit_equals_separate_commit_and_saves_the_prefill_and_commit_forwards():
    model = wrap(block_size=4)
    ids = torch.randint(3, 60, (1, 8), generator=torch.Generator().manual_seed(0))
    fused = run(model, ids, max_new_tokens=16, steps=4)
    separate = run(model, ids, max_new_tokens=16, steps=4, commit="separate")
    assert torch.equal(fused.sequences, separate.sequences) and fused.sequences.shape[1] == 16
    assert fused.nfe == 16 and fused.prefill_forwards == 0  # one forward per token; the prompt rides along
    assert separate.nfe == 1 + 16 + 16 // 4 - 1  # a prefill, and a commit forward for every block followed by one
    assert separate.prefill_forwards == 1


def test_batch_of_different_lengths_equals_each_prompt_alone():
    model = wrap(block_size=4)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 60, (n,), generator=g) for n in (3, 9, 4, 12)]
    ids = torch.zeros(4, 12, dtype=torch.long)
    mask = torch.zeros(4, 12, dtype=torch.long)
    for row, prompt in enumerate(prompts):  # right-padded input: the engine re-lays it out by blocks
        ids[row, : len(prompt)], mask[row, : len(prompt)] = prompt, 1
    batch = model.generate(ids, mask, max_new_tokens=13, steps=2)
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], max_new_tokens=13, steps=2)
        assert torch.equal(batch[row, : alone.shape[1]], alone[0])


@pytest.mark.parametrize("strategy", ["low_confidence_dynamic", "threshold"])
def test_a_row_whose_block_is_done_leaves_the_blocks_remaining_steps(strategy):
    """Rows finish a block after different numbers of steps; the steps after a row's last one run without it.
    Its tokens and its forwards are then exactly what it gets alone."""
    from diffusionvl.inference import chat_inputs, load
    from diffusionvl.minivl.generator import generate

    model, processor = load("minivl-dvlm")
    samples = generate("caption", "test", 1, 4, 112) + generate("count", "test", 1, 4, 112)
    options = dict(max_new_tokens=32, steps=8, remasking_strategy=strategy, confidence_threshold=0.9,
                   return_dict_in_generate=True)
    batch = model.generate(**chat_inputs(processor, [s.question for s in samples], [[s.image] for s in samples]),
                           **options)
    alone = [model.generate(**chat_inputs(processor, [s.question], [[s.image]]), **options) for s in samples]
    assert [row[row != model.special_tokens.pad].tolist() for row in batch.sequences] == \
        [out.sequences[0].tolist() for out in alone]
    assert [steps for steps in batch.block_steps] == [out.block_steps[0] for out in alone]
    assert batch.row_forwards == sum(out.row_forwards for out in alone)  # no row waits in a forward
    assert batch.nfe < batch.row_forwards  # and the batch shares its forwards


def test_a_row_that_ends_early_does_not_stop_the_others(trained):
    tokens = [[3, 4], [10, 11, 12, 13, 14, 15, 16, 17, 18], [20, 21, 22, 23, 24]]
    width = max(len(t) for t in tokens) + 1
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for row, t in enumerate(tokens):  # left-padded, as chat batches usually are
        ids[row, width - len(t) - 1 :], mask[row, width - len(t) - 1 :] = toy_prompt(t), 1
    out = run(trained, ids, mask, max_new_tokens=32, steps=4)
    for row, t in enumerate(tokens):
        alone = trained.generate(toy_prompt(t), max_new_tokens=32, steps=4)
        assert out.sequences[row, : alone.shape[1]].tolist() == alone[0].tolist()
        assert out.sequences[row, alone.shape[1] :].eq(trained.special_tokens.pad).all()
    assert [len(steps) for steps in out.block_steps] == [2, 3, 2]  # rows left the batch at different blocks


def test_dynamic_needs_no_more_forwards_than_static_and_equals_it_at_threshold_one(trained):
    prompt = toy_prompt([10, 11, 12, 13, 14, 15, 16, 17])
    static = run(trained, prompt, max_new_tokens=32, steps=4)
    dynamic = run(trained, prompt, max_new_tokens=32, steps=4, remasking_strategy="low_confidence_dynamic")
    strict = run(
        trained, prompt, max_new_tokens=32, steps=4, remasking_strategy="low_confidence_dynamic", confidence_threshold=1.0
    )
    assert dynamic.nfe < static.nfe
    assert torch.equal(strict.sequences, static.sequences) and strict.nfe == static.nfe


def test_streamed_chunks_concatenate_to_the_full_text(trained):
    tokenizer = tiny_tokenizer(words=60)
    prompt = toy_prompt([5, 6, 7, 8, 9, 10, 11])
    full = tokenizer.decode(trained.generate(prompt, max_new_tokens=32, steps=4)[0], skip_special_tokens=True)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    worker = threading.Thread(
        target=trained.generate, args=(prompt,), kwargs=dict(max_new_tokens=32, steps=4, streamer=streamer)
    )
    worker.start()
    chunks = list(streamer)
    worker.join()
    assert len([c for c in chunks if c]) >= 2  # one chunk per committed block, not one at the end
    assert "".join(chunks).strip() == full.strip() and full


def test_steps_above_block_size_are_clamped():
    model = wrap(block_size=4)
    ids = random_ids(1, 6, seed=1)
    assert torch.equal(model.generate(ids, max_new_tokens=8, steps=100), model.generate(ids, max_new_tokens=8, steps=4))


def test_the_seed_call_signature_works():
    model = wrap(block_size=8)
    ids = random_ids(1, 10, seed=2)
    out = model.generate(
        inputs=ids, gen_length=64, steps=8, temperature=0.0, remasking_strategy="low_confidence_static"
    )
    assert out.dtype == torch.long and 0 < out.shape[1] <= 64


def test_sampling_is_reproducible_and_never_emits_mask_or_pad():
    model = wrap(block_size=4)
    with torch.no_grad():  # make the mask and pad tokens the most likely ones everywhere
        model.get_output_embeddings().weight[[MASK_ID, 0]] *= 50
    ids = random_ids(2, 6, seed=3)
    options = dict(max_new_tokens=16, steps=2, temperature=1.5, top_k=20, top_p=0.9)
    first = model.generate(ids, generator=torch.Generator().manual_seed(0), **options)
    second = model.generate(ids, generator=torch.Generator().manual_seed(0), **options)
    assert torch.equal(first, second)
    greedy = model.generate(ids, max_new_tokens=16, steps=2, return_dict_in_generate=True)
    sampled = model.generate(ids, generator=torch.Generator().manual_seed(0), return_dict_in_generate=True, **options)
    tokens = model.special_tokens
    assert tokens.pad == 0  # the boosted row: the sampler's input favours pad, which must never be proposed
    for out in (sampled, greedy):
        for row, reason in zip(out.sequences.tolist(), out.finish_reasons):
            answer = row[:16] if reason == "length" else row[: row.index(tokens.eot) + 1]
            assert answer and MASK_ID not in answer and tokens.pad not in answer, (reason, row)


class LeftToRight:
    """Commit the leftmost mask each step: the answer before the tail, so a block's end is decided early."""

    def select(self, confidence, masked, context):
        first = masked.float().argmax(-1)
        return torch.nn.functional.one_hot(first, masked.shape[1]).bool() & masked


def test_a_user_policy_object_drives_the_block_loop():
    model = wrap(block_size=4)
    out = run(model, random_ids(1, 8, seed=4), max_new_tokens=8, steps=4, remasking_strategy=LeftToRight())
    assert out.block_steps[0] and all(steps == 4 for steps in out.block_steps[0])  # one token per step, in order


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(steps=0), "steps must be a positive integer"),
        (dict(max_new_tokens=0), "max_new_tokens must be a positive integer"),
        (dict(temperature=-0.5), "temperature must be a finite number >= 0"),
        (dict(temperature=float("inf")), "temperature must be a finite number >= 0"),
        (dict(top_p=1.5), r"top_p must lie in \(0, 1\]"),
        (dict(top_p=0.0), r"top_p must lie in \(0, 1\]"),
        (dict(remasking_strategy="random_guess"), "unknown remasking_strategy"),
        (dict(max_new_tokens=600), "lower max_new_tokens to at most"),
    ],
)
def test_bad_generation_options_fail_clearly(options, message):
    model = wrap(block_size=4)
    with pytest.raises(ValueError, match=message):
        model.generate(random_ids(1, 6, seed=5), **options)


def test_prompt_longer_than_the_positions_fails_clearly():
    with pytest.raises(ValueError, match="has 512 positions .* shorten the prompt to under 512 tokens"):
        wrap(block_size=4).generate(random_ids(1, 520, seed=6), max_new_tokens=4)


def test_empty_prompt_and_unknown_option_fail_clearly():
    model = wrap(block_size=4)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        model.generate(torch.ones(2, 3, dtype=torch.long), torch.tensor([[1, 1, 1], [0, 0, 0]]))
    with pytest.raises(TypeError, match="unknown generation option"):
        model.generate(torch.ones(1, 3, dtype=torch.long), num_beams=4)


def test_stop_strings_end_a_row(trained):
    tokenizer = tiny_tokenizer(words=60)
    prompt = toy_prompt([10, 11, 12, 13, 14, 15, 16, 17])
    out = trained.generate(prompt, max_new_tokens=32, steps=4, stop_strings=["w40"], tokenizer=tokenizer)
    assert tokenizer.decode(out[0]).split()[-1] == "w40"
    with pytest.raises(ValueError, match="tokenizer"):
        trained.generate(prompt, max_new_tokens=32, stop_strings=["w40"])


def test_settling_a_finished_block_saves_forwards_and_changes_no_token(trained, monkeypatch):
    import diffusionvl.decoding.engine

    prompts = [toy_prompt([10, 11]), toy_prompt([3, 4, 5, 6, 7, 8])]  # answers that end inside a block
    options = dict(max_new_tokens=32, steps=4, remasking_strategy=LeftToRight())
    settled = [run(trained, p, **options) for p in prompts]
    monkeypatch.setattr(diffusionvl.decoding.engine, "settle_after_end", lambda block, masked, answer, eot: (block, masked))
    unsettled = [run(trained, p, **options) for p in prompts]
    for fast, slow in zip(settled, unsettled):
        assert torch.equal(fast.sequences, slow.sequences)
    assert sum(o.nfe for o in settled) < sum(o.nfe for o in unsettled)


@pytest.mark.parametrize("name", ["text", "minivl-dvlm"])
def test_the_kernel_sharing_kv_heads_is_chosen_once_and_both_decoders_run_it(name, monkeypatch):
    """Wrapping or loading picks the kernel; generate (cached or reference) never switches it."""
    from transformers import AttentionInterface

    from diffusionvl.inference import open_model, open_processor
    from diffusionvl.modeling import attention

    model = wrap(block_size=4) if name == "text" else open_model(name)
    config = model.backbone.decoder.config
    assert config._attn_implementation == attention.ATTENTION
    assert config.num_key_value_heads < config.num_attention_heads
    calls, kernels = [], []
    original = attention.sdpa_shared_kv

    def spy(*args, **kwargs):
        calls.append(args[4] is not None)
        kernels.append(config._attn_implementation)
        return original(*args, **kwargs)
    AttentionInterface.register(attention.ATTENTION, spy)
    try:
        ids = random_ids(2, 6, seed=1) if name == "text" else \
            open_processor(name).tokenizer(["a red circle"], return_tensors="pt").input_ids
        for cached in (True, False):
            calls.clear()
            model.generate(ids, max_new_tokens=8, steps=4, use_cache=cached)
            assert calls and all(calls)  # every decoder layer of every step, each under the block mask
    finally:
        AttentionInterface.register(attention.ATTENTION, original)
    assert set(kernels) == {attention.ATTENTION} and config._attn_implementation == attention.ATTENTION


def test_two_threads_decoding_on_one_model_equal_one_thread():
    model = wrap(block_size=4, seed=8)
    prompts = [random_ids(2, 5 + index, seed=index) for index in range(6)]
    options = dict(max_new_tokens=12, steps=2, remasking_strategy="low_confidence_dynamic", confidence_threshold=0.02)
    alone = [run(model, ids, **options).sequences for ids in prompts]
    results: dict[int, torch.Tensor] = {}

    def worker(indices):
        for index in indices:
            results[index] = run(model, prompts[index], use_cache=index % 3 != 0, **options).sequences
    threads = [threading.Thread(target=worker, args=(range(start, 6, 2),)) for start in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(torch.equal(results[index], alone[index]) for index in range(6))


def stop_words(model, ids, tokenizer, **options) -> dict[str, str]:
    """A word of the first block and one of the last block of the answer decoded without stop strings."""
    out = run(model, ids, **options).sequences[0]
    answer = out[out != model.special_tokens.pad].tolist()
    words = [tokenizer.decode([token]) for token in answer]
    size = model.block_size
    found = {"first": next((w for w in words[:size] if w.strip()), None),
             "last": next((w for w in reversed(words[-(len(answer) % size or size):]) if w.strip()), None)}
    return {where: word for where, word in found.items() if word}


MODELS = [dict(family=family, block_size=size, seed=seed, logit_shift=shift)
          for family, size, seed, shift in [("qwen2", 4, 1, False), ("qwen2", 2, 2, True), ("qwen3", 4, 3, False),
                                           ("llama", 8, 4, True), ("mistral", 4, 5, False), ("qwen2", 8, 6, False)]]


@pytest.mark.parametrize("options", MODELS, ids="{family}-B{block_size}-seed{seed}-shift{logit_shift}".format_map)
@pytest.mark.parametrize("commit", ["fused", "separate"])
def test_fast_equals_reference_with_stop_strings_in_the_first_and_the_last_block(options, commit):
    model, tokenizer = wrap(**options), tiny_tokenizer()
    ids = random_ids(2, 6, seed=options["seed"])
    decoding = dict(max_new_tokens=13, steps=2, commit=commit, tokenizer=tokenizer)
    checked = 0
    for row in ids:
        for where, word in stop_words(model, row[None], **decoding).items():
            fast = run(model, row[None], stop_strings=(word,), **decoding)
            slow = run(model, row[None], stop_strings=(word,), use_cache=False, **decoding)
            assert torch.equal(fast.sequences, slow.sequences), (where, word)
            assert fast.finish_reasons == slow.finish_reasons == ["stop_string"], (where, word)
            checked += 1
    assert checked >= 2


def test_fast_equals_reference_with_stop_strings_on_the_trained_and_the_shipped_models(trained):
    from diffusionvl.inference import chat_inputs, load

    tokenizer = tiny_tokenizer()
    for tokens in ([10, 11, 12, 13, 14], [3, 4, 5]):
        for word in stop_words(trained, toy_prompt(tokens)[None], tokenizer, max_new_tokens=24, steps=4).values():
            fast, slow = (run(trained, toy_prompt(tokens), max_new_tokens=24, steps=4, stop_strings=(word,),
                              tokenizer=tokenizer, use_cache=cached) for cached in (True, False))
            assert torch.equal(fast.sequences, slow.sequences) and fast.finish_reasons == slow.finish_reasons
    model, processor = load("minivl-dvlm")
    inputs = chat_inputs(processor, ["Describe the image."], [[_picture()]])
    decoding = dict(max_new_tokens=16, steps=8, tokenizer=processor.tokenizer)
    answer = model.generate(**inputs, **decoding)[0]
    words = processor.tokenizer.decode(answer[answer != model.special_tokens.pad]).split()
    for word in (words[0], words[-2]):  # a word of the first block and one near the end
        fast, slow = (model.generate(**inputs, stop_strings=(word,), use_cache=cached, return_dict_in_generate=True,
                                     **decoding) for cached in (True, False))
        assert torch.equal(fast.sequences, slow.sequences) and fast.finish_reasons == slow.finish_reasons


def _picture():
    from diffusionvl.minivl.generator import generate

    return generate("caption", "test", 11, 1, 112)[0].image


@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("sampled", [False, True])
def test_decoding_makes_every_tensor_on_the_inputs_device(cached, sampled):
    """A stand-in for a GPU run on a CPU-only machine: with "meta" as the default device, any tensor the decoders
    make without `device=` lands on meta, and the output is not the CPU tensor it must be (or an op fails)."""
    model, tokenizer = wrap(block_size=4, seed=9), tiny_tokenizer()
    ids = random_ids(2, 7, seed=2)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # a left-padded row
    options = dict(max_new_tokens=10, steps=2, use_cache=cached, stop_strings=("w7",), tokenizer=tokenizer,
                   temperature=1.0 if sampled else 0.0)
    expected = run(model, ids, mask, generator=torch.Generator().manual_seed(0), **options)
    generator = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        out = run(model, ids, mask, generator=generator, **options)
    assert out.sequences.device.type == "cpu" and torch.equal(out.sequences, expected.sequences)

