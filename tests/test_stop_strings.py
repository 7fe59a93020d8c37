"""The incremental stop-string check equals its definition: cut after the shortest token prefix whose text
holds a stop string, checked over the whole text after every block."""

import random

import pytest

from diffusionvl.decoding.outputs import StopStrings
from diffusionvl.loading import load_processor


def cut_by_definition(out: list[int], stops, tokenizer) -> bool:
    """The quadratic definition: decode every prefix."""
    for end in range(1, len(out) + 1):
        if any(s in tokenizer.decode(out[:end]) for s in stops):
            del out[end:]
            return True
    return False


@pytest.fixture(scope="module")
def tokenizer():
    return load_processor("minivl-dvlm").tokenizer


@pytest.mark.parametrize("seed", range(40))
def test_incremental_cut_equals_the_definition_block_by_block(tokenizer, seed):
    rng = random.Random(seed)
    vocabulary = rng.sample(range(tokenizer.vocab_size), 24)  # few ids, so stop strings recur
    answer = [rng.choice(vocabulary) for _ in range(rng.randint(4, 60))]
    text = tokenizer.decode(answer)
    start = rng.randrange(len(text))  # a stop string taken from the text, so most cases do stop somewhere
    stops = (text[start: start + rng.randint(1, 12)], "never appears here")
    matcher, fast, slow, block = StopStrings(stops, tokenizer), [], [], rng.randint(1, 8)
    for first in range(0, len(answer), block):
        new = answer[first: first + block]
        fast += new
        slow += new
        hit_fast, hit_slow = matcher.cut(fast, len(new)), cut_by_definition(slow, stops, tokenizer)
        assert (hit_fast, fast) == (hit_slow, slow)
        if hit_fast:
            break


def test_a_stop_string_spanning_two_blocks_is_found(tokenizer):
    ids = tokenizer("red circle and a blue square", add_special_tokens=False).input_ids
    matcher, out = StopStrings(("and a blue",), tokenizer), []
    for index, token in enumerate(ids):  # one token per block
        out.append(token)
        if matcher.cut(out, 1):
            break
    assert tokenizer.decode(out).endswith("blue") and index < len(ids) - 1


def test_rows_cut_early_in_a_batch_end_where_they_were_cut_when_pad_is_the_end_of_turn():
    """SmolLM2 pads with its end-of-turn token: a row cut by a stop string (or the length limit) inside a batch
    must not come back with the pad read as an end-of-turn. Batched rows equal each row alone."""
    from conftest import EOT_ID, tiny_causal_lm, tiny_tokenizer

    from diffusionvl import DiffusionVL
    from diffusionvl.decoding.config import DecodingConfig
    from diffusionvl.inference import answer

    tokenizer = tiny_tokenizer(words=60)
    model = DiffusionVL.from_autoregressive(tiny_causal_lm(vocab_size=63), tokenizer, block_size=4,
                                            pad_token_id=EOT_ID).eval()
    assert model.special_tokens.pad == model.special_tokens.eot
    texts = ["w1 w2 w3", "w4 w5 w6 w7 w8 w9 w10"]

    def rows(prompts, config):
        inputs = dict(tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt"))
        return answer(model, tokenizer, inputs, config).rows

    free = rows(texts[:1], DecodingConfig(max_new_tokens=12, steps=4))[0]
    stop = tokenizer.decode(free[2:3])  # the first row's third word: it is cut there, the other row later or not
    config = DecodingConfig(max_new_tokens=12, steps=4, stop_strings=(stop,))
    batch = rows(texts, config)
    assert batch == [rows([text], config)[0] for text in texts]
    assert len(batch[0]) == 3 and EOT_ID not in batch[0]
