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
