"""Self-speculative decoding (`remasking_strategy="speculative"`): the diffusion head drafts, the model's causal
mode verifies. Lossless: the tokens are the causal mode's greedy decode. The engine equals the slow reference
forward for forward, a batch equals each row alone, and rows joining a running decode do not change it."""

import copy

import pytest
import torch
from conftest import EOT_ID, MASK_ID, random_ids, tiny_tokenizer, toy_prompt, train, wrap

from diffusionvl import DiffusionVL
from diffusionvl.decoding.config import DecodingConfig
from diffusionvl.errors import DiffusionVLError
from diffusionvl.inference import causal_model

pytestmark = pytest.mark.usefixtures("one_thread")
CAUSAL = dict(logit_shift=True, context_attention="causal")
SPECULATIVE = dict(remasking_strategy="speculative")


@pytest.fixture(scope="module")
def toy_causal(trained_ar):
    """The toy task's AR model translated with causal context and logit shift, its drafts trained (block 4)."""
    model = DiffusionVL.from_autoregressive(copy.deepcopy(trained_ar), mask_token_id=MASK_ID, block_size=4, **CAUSAL)
    train(model, 150, 2e-3, seed=2)
    return model


def source_greedy(model, ids: torch.Tensor, max_new_tokens: int) -> list[int]:
    """The causal mode's greedy decode by transformers' own generate (its KV cache), cut after end-of-turn."""
    with torch.no_grad():
        out = causal_model(model).generate(ids[None], max_new_tokens=max_new_tokens, do_sample=False,
                                           eos_token_id=EOT_ID, pad_token_id=EOT_ID)[0, len(ids):].tolist()
    return out[: out.index(EOT_ID) + 1] if EOT_ID in out else out


def kept(out: torch.Tensor, model) -> list[int]:
    return out[out != model.special_tokens.pad].tolist()


@pytest.mark.parametrize("size,copies", [(2, None), (4, None), (8, None), (4, 0), (8, 2)])
def test_the_engine_equals_the_reference_and_both_write_the_causal_modes_greedy_decode(size, copies):
    """Any number of noisy copies per verify forward (a redraft without a copy takes a forward of its own)."""
    model = wrap(block_size=size, seed=size, **CAUSAL)
    options = dict(SPECULATIVE, speculative_copies=copies)
    for length in (1, 3, size, 2 * size + 1):
        ids = random_ids(length, seed=length)
        fast = model.generate(ids[None], max_new_tokens=17, return_dict_in_generate=True, **options)
        slow = model.generate(ids[None], max_new_tokens=17, use_cache=False, return_dict_in_generate=True,
                              **options)
        assert torch.equal(fast.sequences, slow.sequences) and fast.nfe == slow.nfe, length
        assert fast.block_steps == slow.block_steps
        assert kept(fast.sequences[0], model) == source_greedy(model, ids, 17), length


def test_on_a_trained_model_drafts_are_accepted_and_the_answer_is_the_sources(toy_causal):
    prompts = [toy_prompt(list(range(10, 10 + n))) for n in (3, 5, 8)]
    accepted = []
    for prompt in prompts:
        out = toy_causal.generate(prompt[None], max_new_tokens=24, return_dict_in_generate=True, **SPECULATIVE)
        answer = kept(out.sequences[0], toy_causal)
        assert answer == source_greedy(toy_causal, prompt, 24) and answer[-1] == EOT_ID
        accepted += out.accepted[0]
    assert sum(accepted) / len(accepted) > 1.5  # a verification keeps more than the correction alone


@pytest.mark.parametrize("copies", [None, 1])
def test_a_batch_of_mixed_lengths_equals_each_row_alone(toy_causal, copies):
    prompts = [toy_prompt(list(range(10, 10 + n))) for n in (2, 9, 4, 6, 7)]
    ids = torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True)
    valid = torch.nn.utils.rnn.pad_sequence([torch.ones_like(p) for p in prompts], batch_first=True)
    options = dict(SPECULATIVE, speculative_copies=copies)
    batch = toy_causal.generate(ids, valid, max_new_tokens=20, return_dict_in_generate=True, **options)
    for row, prompt in enumerate(prompts):
        alone = toy_causal.generate(prompt[None], max_new_tokens=20, return_dict_in_generate=True, **options)
        assert kept(batch.sequences[row], toy_causal) == kept(alone.sequences[0], toy_causal), row
        assert batch.accepted[row] == alone.accepted[0], row  # the same drafts, verified the same way


def test_rows_joining_a_running_decode_equal_each_row_alone(toy_causal):
    from test_continuous import alone, staggered

    config = DecodingConfig(max_new_tokens=20, **SPECULATIVE)
    first = [toy_prompt([10, 11, 12]), random_ids(9, seed=2)]
    second = [random_ids(23, seed=3), toy_prompt([20, 21])]
    outputs = staggered(toy_causal, config, [(0, first), (2, second)])
    for row, prompt in enumerate(first + second):
        assert outputs[row] == alone(toy_causal, prompt, config), row


@pytest.mark.parametrize("options, reason", [
    (dict(max_new_tokens=32), "stop"),
    (dict(max_new_tokens=3), "length"),
    (dict(max_new_tokens=32, stop_strings=("w39",)), "stop_string"),
])
def test_rows_end_by_the_one_rule_and_the_reference_agrees(toy_causal, options, reason):
    prompts = [toy_prompt([10, 11, 12, 13, 14]), toy_prompt([3, 4, 5, 6, 7, 8, 9])]
    ids = torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True)
    valid = torch.nn.utils.rnn.pad_sequence([torch.ones_like(p) for p in prompts], batch_first=True)
    fast, slow = (toy_causal.generate(ids, valid, use_cache=cached, tokenizer=tiny_tokenizer(),
                                      return_dict_in_generate=True, **SPECULATIVE, **options)
                  for cached in (True, False))
    assert fast.finish_reasons == slow.finish_reasons and torch.equal(fast.sequences, slow.sequences)
    assert fast.finish_reasons[0] == reason


def test_sampling_and_models_without_a_causal_mode_are_refused():
    with pytest.raises(DiffusionVLError, match="speculative decoding is greedy"):
        DecodingConfig(temperature=0.7, **SPECULATIVE)
    for options in (dict(logit_shift=True), dict(context_attention="causal")):
        with pytest.raises(DiffusionVLError, match="verifies drafts with the model's own causal mode"):
            wrap(**options).generate(random_ids(1, 4), max_new_tokens=4, **SPECULATIVE)


def test_the_observer_sees_drafts_accepted_as_shown_and_the_verifiers_own_tokens(toy_causal):
    """Each verify forward shows the block with a verdict per position: an accepted position holds the draft shown
    the forward before; a verified position never changes again; the blocks shown last are the answer."""
    from diffusionvl.decoding.engine import BlockDecoder
    from diffusionvl.decoding.prompts import build_prompts
    from diffusionvl.decoding.speculative import ACCEPTED, CORRECTED, DRAFT

    frames = []
    prompt = toy_prompt(list(range(10, 19)))
    decoder = BlockDecoder(toy_causal, DecodingConfig(max_new_tokens=24, **SPECULATIVE), observer=lambda rows, step,
                           block, masked, verdict: frames.append((len(rows[0].block_steps), block[0].tolist(),
                                                                  masked[0].tolist(), verdict[0].tolist())))
    with torch.no_grad():
        decoder.admit(build_prompts(toy_causal, prompt[None], torch.ones_like(prompt)[None], None))
        out = decoder.run()
    counts, last = {DRAFT: 0, ACCEPTED: 0, CORRECTED: 0}, {}
    for (number, block, masked, verdict), before in zip(frames, [None] + frames[:-1]):
        for position, (token, hidden, kind) in enumerate(zip(block, masked, verdict)):
            assert not hidden or kind == DRAFT
            if before is not None and before[0] == number and before[3][position] != DRAFT:
                assert kind == before[3][position] and token == before[1][position]  # verified: final
            elif kind == ACCEPTED and before is not None and before[0] == number:
                counts[kind] += 1
                assert token == before[1][position] and not before[2][position]  # the draft shown before
            elif kind == CORRECTED:
                counts[kind] += 1
        last[number] = block
    shown = [token for number in sorted(last) for token in last[number]][len(prompt) % 4:]
    answer = kept(out.sequences[0], toy_causal)
    assert shown[: len(answer)] == answer and len(answer) > 4 and counts[ACCEPTED] > 0 and counts[CORRECTED] > 0


@pytest.mark.parametrize("options", [dict(max_new_tokens=32), dict(max_new_tokens=6),
                                     dict(max_new_tokens=32, stop_strings=("w39",))])
def test_verified_tokens_go_out_before_the_commit_and_the_stream_is_the_answer(toy_causal, options):
    """A speculative decode hands out each row's tokens by accepted run (on_tokens), the commit only the rest:
    per row, the two together are its answer, whatever ends it; some go out before their block is committed."""
    from diffusionvl.decoding.engine import BlockDecoder
    from diffusionvl.decoding.prompts import build_prompts

    prompts = [toy_prompt([10, 11, 12, 13, 14]), toy_prompt([3, 4, 5, 6, 7, 8, 9]), random_ids(6, seed=3)]
    ids = torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True)
    valid = torch.nn.utils.rnn.pad_sequence([torch.ones_like(p) for p in prompts], batch_first=True)
    decoder = BlockDecoder(toy_causal, DecodingConfig(**SPECULATIVE, **options), tiny_tokenizer())
    streamed, early, answers = {}, [0], {}

    def release(row, new):
        streamed.setdefault(row.id, []).extend(new)
        early[0] += len(new)

    decoder.on_tokens = release
    toy_causal.eval()  # as generate decodes
    with torch.no_grad():
        decoder.admit(build_prompts(toy_causal, ids, valid.bool(), None))
        while len(decoder.batch):
            for row, new in decoder.step():
                streamed.setdefault(row.id, []).extend(new)
                if row.finished:
                    answers[row.id] = row.tokens
    assert streamed == answers and early[0] > 0
    alone = toy_causal.generate(ids, valid, tokenizer=tiny_tokenizer(), return_dict_in_generate=True,
                                **SPECULATIVE, **options)
    assert [answers[row] for row in range(len(prompts))] == alone.rows
