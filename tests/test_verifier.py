"""Speculative decoding with a separate verifier (`generate(..., verifier=ar_model)`): a translation drafts, an
autoregressive model checks. Lossless against that model's own greedy `generate`; the engine equals the slow
reference forward for forward; batches, joining rows and every ending as with the model's own causal mode."""

import copy

import pytest
import torch
from conftest import EOT_ID, MASK_ID, random_ids, tiny_causal_lm, tiny_tokenizer, toy_prompt, train, wrap

from diffusionvl import DiffusionVL
from diffusionvl.decoding.config import DecodingConfig
from diffusionvl.errors import DiffusionVLError

pytestmark = pytest.mark.usefixtures("one_thread")
SPECULATIVE = dict(remasking_strategy="speculative")


@pytest.fixture(scope="module")
def pair(trained_ar):
    """A drafter whose own causal mode is not the verifier: the toy AR translated with logit shift and trained
    as a whole (its clean stream moves too), and the toy AR itself, untouched, as the verifier."""
    drafter = DiffusionVL.from_autoregressive(copy.deepcopy(trained_ar), mask_token_id=MASK_ID, block_size=4,
                                              logit_shift=True)
    train(drafter, 150, 2e-3, seed=2)
    return drafter, copy.deepcopy(trained_ar)


def ar_greedy(ar, drafter, ids: torch.Tensor, max_new_tokens: int) -> list[int]:
    """The verifier's greedy decode by transformers' own generate (the mask never written), cut after end-of-turn."""
    with torch.no_grad():
        out = ar.generate(ids[None], max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=EOT_ID,
                          pad_token_id=EOT_ID, suppress_tokens=list(drafter.special_tokens.never_generated))
    new = out[0, len(ids):].tolist()
    return new[: new.index(EOT_ID) + 1] if EOT_ID in new else new


def kept(out: torch.Tensor, model) -> list[int]:
    return out[out != model.special_tokens.pad].tolist()


@pytest.mark.parametrize("copies", [None, 0, 1])
def test_the_answer_is_the_verifiers_greedy_answer_and_the_engine_equals_the_reference(pair, copies):
    drafter, ar = pair
    options = dict(SPECULATIVE, speculative_copies=copies)
    accepted = []
    for prompt in (toy_prompt(list(range(10, 10 + n))) for n in (1, 3, 6)):
        fast = drafter.generate(prompt[None], max_new_tokens=20, verifier=ar, return_dict_in_generate=True, **options)
        slow = drafter.generate(prompt[None], max_new_tokens=20, verifier=ar, use_cache=False,
                                return_dict_in_generate=True, **options)
        assert torch.equal(fast.sequences, slow.sequences) and fast.nfe == slow.nfe
        assert fast.block_steps == slow.block_steps and fast.accepted == slow.accepted
        assert kept(fast.sequences[0], drafter) == ar_greedy(ar, drafter, prompt, 20)
        accepted += fast.accepted[0]
    assert sum(accepted) / len(accepted) > 1.25  # drafts are kept: a check keeps more than its own token


def test_the_drafters_own_causal_mode_answers_differently_so_the_verifier_decides(pair):
    """The control: the drafter's own causal mode is not the AR (trained as a whole), and on random prompts the
    verifier's answers are the AR's, not the drafter's."""
    drafter, ar = pair
    own = DiffusionVL.from_autoregressive(copy.deepcopy(drafter.model), mask_token_id=MASK_ID, block_size=4,
                                          logit_shift=True, context_attention="causal")
    differ = 0
    for seed in range(6):
        prompt = random_ids(5, seed=seed)
        checked = drafter.generate(prompt[None], max_new_tokens=12, verifier=ar, **SPECULATIVE)
        assert kept(checked[0], drafter) == ar_greedy(ar, drafter, prompt, 12), seed
        differ += kept(own.generate(prompt[None], max_new_tokens=12, **SPECULATIVE)[0], own) != kept(checked[0],
                                                                                                        drafter)
    assert differ >= 1


def test_a_batch_of_mixed_lengths_and_rows_joining_equal_each_row_alone(pair):
    from test_continuous import alone, staggered

    drafter, ar = pair
    verifier = drafter.as_verifier(ar)
    prompts = [toy_prompt(list(range(10, 10 + n))) for n in (2, 9, 4)] + [random_ids(7, seed=4)]
    ids = torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True)
    valid = torch.nn.utils.rnn.pad_sequence([torch.ones_like(p) for p in prompts], batch_first=True)
    batch = drafter.generate(ids, valid, max_new_tokens=20, verifier=ar, return_dict_in_generate=True, **SPECULATIVE)
    for row, prompt in enumerate(prompts):
        one = drafter.generate(prompt[None], max_new_tokens=20, verifier=ar, return_dict_in_generate=True,
                               **SPECULATIVE)
        assert kept(batch.sequences[row], drafter) == kept(one.sequences[0], drafter), row
        assert batch.accepted[row] == one.accepted[0], row
    config = DecodingConfig(max_new_tokens=16, **SPECULATIVE)
    outputs = staggered(drafter, config, [(0, prompts[:2]), (2, prompts[2:])], verifier=verifier)
    for row, prompt in enumerate(prompts):
        assert outputs[row] == alone(drafter, prompt, config, verifier=verifier), row


@pytest.mark.parametrize("options, reason", [
    (dict(max_new_tokens=32), "stop"),
    (dict(max_new_tokens=3), "length"),
    (dict(max_new_tokens=32, stop_strings=("w40",)), "stop_string"),  # in the AR's first answer
])
def test_rows_end_by_the_one_rule_and_the_reference_agrees(pair, options, reason):
    drafter, ar = pair
    prompts = [toy_prompt([10, 11, 12, 13, 14]), toy_prompt([3, 4, 5, 6, 7, 8, 9])]
    ids = torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True)
    valid = torch.nn.utils.rnn.pad_sequence([torch.ones_like(p) for p in prompts], batch_first=True)
    fast, slow = (drafter.generate(ids, valid, use_cache=cached, tokenizer=tiny_tokenizer(), verifier=ar,
                                   return_dict_in_generate=True, **SPECULATIVE, **options) for cached in (True, False))
    assert fast.finish_reasons == slow.finish_reasons and torch.equal(fast.sequences, slow.sequences)
    assert fast.finish_reasons[0] == reason


def test_a_verifier_needs_speculative_decoding_a_drafter_with_logit_shift_and_the_same_tokens():
    ar, ids = tiny_causal_lm(seed=5), random_ids(1, 4)
    with pytest.raises(DiffusionVLError, match="a verifier checks speculative drafts"):
        wrap(logit_shift=True).generate(ids, max_new_tokens=4, verifier=ar)
    with pytest.raises(DiffusionVLError, match="needs a translation with logit_shift"):
        wrap().generate(ids, max_new_tokens=4, verifier=ar, **SPECULATIVE)
    other = DiffusionVL.from_autoregressive(ar, mask_token_id=MASK_ID, block_size=8, logit_shift=True,
                                            context_attention="causal")
    with pytest.raises(DiffusionVLError, match="block size 8 vs 4"):
        wrap(logit_shift=True).generate(ids, max_new_tokens=4, verifier=other, **SPECULATIVE)
