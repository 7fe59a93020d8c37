"""The Python-API decoding rows of the bad-inputs probes (/work/shared/probes/bad-inputs.md), one case each.

Every row is a regression case: an error row must raise a clear library message, an OK row must keep working.
A case is (row, description, call, expected); expected is (error type, message regex) or a predicate on the
call's result. Rows 20-26 are the command line's rows asked through Python.
"""

from functools import cache

import numpy as np
import pytest
import torch
from conftest import MASK_ID, fake_image, image_prompt, random_ids, tiny_qwen_vl, tiny_tokenizer, wrap
from transformers import TextStreamer

from diffusionvl import DiffusionVL
from diffusionvl.errors import DiffusionVLError

IDS = random_ids(1, 7, seed=11)  # (1, 7): one prompt, not a multiple of the block size
BAD = DiffusionVLError


@cache
def text_model(block_size: int = 4) -> DiffusionVL:
    return wrap(block_size=block_size)


@cache
def vl_model() -> DiffusionVL:
    return DiffusionVL.from_autoregressive(tiny_qwen_vl(), mask_token_id=MASK_ID, block_size=4)


def gen(ids=IDS, mask=None, **options):
    """The text model's answer, 8 new tokens unless told otherwise."""
    return text_model().generate(ids, mask, **{"max_new_tokens": 8, **options})


def same(first, second) -> bool:
    return torch.equal(first, second)


def is_true(result) -> bool:
    return result is True


def padded(prompts: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L) ids and attention mask of 1-D prompts, padded with 0 on `side`."""
    width = max(len(p) for p in prompts)
    ids, mask = torch.zeros(len(prompts), width, dtype=torch.long), torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        cut = slice(width - len(prompt), width) if side == "left" else slice(0, len(prompt))
        ids[row, cut], mask[row, cut] = prompt, 1
    return ids, mask


def batch_equals_singles() -> bool:
    """Row 60: 3, 9 and 14 tokens, left or right padded, static, dynamic and without cache: each row = alone."""
    prompts = [random_ids(n, seed=n) for n in (3, 9, 14)]
    variants = [{}, dict(remasking_strategy="low_confidence_dynamic", confidence_threshold=0.02), dict(use_cache=False)]
    for side in ("left", "right"):
        ids, mask = padded(prompts, side)
        for options in variants:
            batch = gen(ids, mask, max_new_tokens=9, steps=2, **options)
            for row, prompt in enumerate(prompts):
                alone = gen(prompt, max_new_tokens=9, steps=2, **options)
                if not same(batch[row, : alone.shape[1]], alone[0]):
                    return False
    return True


class CommitsNothing:
    def select(self, confidence, masked, context):
        return torch.zeros_like(masked)


class WrongShape:
    def select(self, confidence, masked, context):
        return masked[:, :3]


class WrongDtype:
    def select(self, confidence, masked, context):
        return masked.long()


def seeded(seed: int):
    return gen(temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(seed))


def image(grid_h: int, grid_w: int, seed: int = 0):
    """(pixel_values, image_grid_thw, image tokens) of one fake image."""
    return fake_image(grid_h, grid_w, seed=seed)


def vl_gen(ids, **options):
    return vl_model().generate(ids, **{"max_new_tokens": 5, "steps": 2, **options})


def vl_with_image(text_before=(5,), placeholders: int = 1, grid=None, **options):
    """A prompt with `placeholders` copies of one 4x6 image's tokens, given that image (or `grid`, not its own)."""
    pixels, own_grid, tokens = image(4, 6, seed=1)
    ids = image_prompt(list(text_before), tokens * placeholders, [7, 1])[None]
    return vl_gen(ids, pixel_values=pixels, image_grid_thw=own_grid if grid is None else grid, **options)


def vl_batch_equals_singles() -> bool:
    """Row 76: two prompts with images of different sizes (6 and 4 image tokens), left padded."""
    (pa, ga, na), (pb, gb, nb) = image(4, 6, seed=4), image(4, 4, seed=5)
    prompts = [image_prompt([5, 6, 7], na, [9, 1]), image_prompt([5], nb, [10, 11, 12, 1])]
    ids, mask = padded(prompts, "left")
    batch = vl_model().generate(ids, mask, max_new_tokens=5, steps=2, pixel_values=torch.cat([pa, pb]),
                                image_grid_thw=torch.cat([ga, gb]))
    singles = [vl_gen(p[None], pixel_values=x, image_grid_thw=g) for p, x, g in zip(prompts, (pa, pb), (ga, gb))]
    return all(same(batch[row, : alone.shape[1]], alone[0]) for row, alone in enumerate(singles))


def train_forward(labels):
    ids = random_ids(1, 8, seed=3)
    return text_model()(input_ids=ids, labels=labels(ids))


POSITIVE_STEPS = "steps must be a positive integer"
THRESHOLD = r"confidence_threshold must lie in \[0, 1\]"
TEMPERATURE = "temperature must be a finite number >= 0"
UNKNOWN_STRATEGY = "unknown remasking_strategy"
EMPTY = "empty"

CASES = [
    (20, "empty 2-D prompt", lambda: gen(torch.ones(1, 0, dtype=torch.long)), (BAD, EMPTY)),
    (20, "blank prompt, only padding", lambda: gen(IDS, torch.zeros(1, 7)), (BAD, "prompt 0 is empty")),
    (21, "max_new_tokens 0", lambda: gen(max_new_tokens=0), (BAD, "max_new_tokens must be a positive integer")),
    (21, "max_new_tokens -5", lambda: gen(max_new_tokens=-5), (BAD, "max_new_tokens must be a positive integer")),
    (22, "steps above the block are clamped", lambda: same(gen(steps=100), gen(steps=4)), is_true),
    (23, "threshold -0.1", lambda: gen(confidence_threshold=-0.1), (BAD, THRESHOLD)),
    (23, "threshold 1.5", lambda: gen(confidence_threshold=1.5), (BAD, THRESHOLD)),
    (23, "threshold nan", lambda: gen(confidence_threshold=float("nan")), (BAD, THRESHOLD)),
    (24, "strategy greedy", lambda: gen(remasking_strategy="greedy"), (BAD, UNKNOWN_STRATEGY)),
    (25, "temperature -1", lambda: gen(temperature=-1), (BAD, TEMPERATURE)),
    (26, "temperature inf", lambda: gen(temperature=float("inf")), (BAD, TEMPERATURE)),
    (26, "temperature nan", lambda: gen(temperature=float("nan")), (BAD, TEMPERATURE)),
    (26, "top_p nan", lambda: gen(temperature=1.0, top_p=float("nan")), (BAD, r"top_p must lie in \(0, 1\]")),
    (40, "block_size 0", lambda: wrap(block_size=0), (ValueError, "block_size must be a positive integer")),
    (40, "block_size -4", lambda: wrap(block_size=-4), (ValueError, "block_size must be a positive integer")),
    (40, "block_size 4.0", lambda: wrap(block_size=4.0), (DiffusionVLError, "block_size.*expected int")),
    (42, "block_size 1024 on 512 positions", lambda: wrap(block_size=1024),
     (ValueError, "block_size=1024 is larger than the model's 512 positions; choose a block size of at most 512")),
    (41, "block_size 3, 7 new tokens", lambda: text_model(3).generate(IDS, max_new_tokens=7),
     lambda out: out.shape == (1, 7)),
    (43, "steps 0", lambda: gen(steps=0), (BAD, POSITIVE_STEPS)),
    (43, "steps 2.5", lambda: gen(steps=2.5), (BAD, POSITIVE_STEPS)),
    (43, "steps True", lambda: gen(steps=True), (BAD, POSITIVE_STEPS)),
    (44, "gen_length 0", lambda: gen(gen_length=0), (BAD, "max_new_tokens must be a positive integer")),
    (44, "gen_length 10**6", lambda: gen(gen_length=10**6), (BAD, "lower max_new_tokens to at most 505")),
    (45, "NumPy and torch integers", lambda: same(
        gen(max_new_tokens=np.int64(8), steps=torch.tensor(2), top_k=np.int32(5), temperature=0.5,
            generator=torch.Generator().manual_seed(0)),
        gen(max_new_tokens=8, steps=2, top_k=5, temperature=0.5, generator=torch.Generator().manual_seed(0))), is_true),
    (46, "strategy random", lambda: gen(remasking_strategy="random"), (BAD, UNKNOWN_STRATEGY)),
    (46, "strategy in the wrong case", lambda: gen(remasking_strategy="Low_Confidence_Static"),
     (BAD, UNKNOWN_STRATEGY)),
    (47, "temperature -0.5", lambda: gen(temperature=-0.5), (BAD, TEMPERATURE)),
    (47, "top_k 0", lambda: gen(top_k=0), (BAD, "top_k must be a positive integer")),
    (47, "top_p 0", lambda: gen(top_p=0), (BAD, r"top_p must lie in \(0, 1\]")),
    (48, "threshold -1", lambda: gen(confidence_threshold=-1), (BAD, THRESHOLD)),
    (48, "threshold 2", lambda: gen(confidence_threshold=2), (BAD, THRESHOLD)),
    (49, "num_beams", lambda: gen(num_beams=4), (TypeError, r"unknown generation option\(s\) \['num_beams'\]")),
    (50, "empty 1-D tensor", lambda: gen(torch.tensor([], dtype=torch.long)), (BAD, EMPTY)),
    (50, "all-zero attention mask", lambda: gen(IDS, torch.zeros_like(IDS)), (BAD, "prompt 0 is empty")),
    (50, "no input", lambda: text_model().generate(max_new_tokens=4), (BAD, "generate needs input_ids")),
    (51, "float ids", lambda: gen(IDS.float()), (BAD, r"input_ids must hold integer token ids, got torch\.float32")),
    (52, "id = vocab size", lambda: gen(torch.cat([IDS, torch.tensor([[96]])], 1)),
     (BAD, r"token id 96 at position 7, but the vocabulary has 96 ids")),
    (52, "negative id", lambda: gen(IDS * 0 - 1), (BAD, r"token id -1 at position 0, .*vocabulary has 96 ids")),
    (53, "mask id in the prompt", lambda: gen(torch.cat([IDS, torch.tensor([[MASK_ID]])], 1)),
     (BAD, rf"mask token id {MASK_ID} at position 7; .*must not appear in prompts")),
    (54, "prompt + answer over 512 positions", lambda: gen(random_ids(1, 500, seed=2), max_new_tokens=16),
     (BAD, "lower max_new_tokens to at most 12")),
    (54, "prompt + answer exactly 512", lambda: gen(random_ids(1, 500, seed=2), max_new_tokens=12),
     lambda out: 0 < out.shape[1] <= 12),
    (55, "attention_mask too short", lambda: gen(IDS, torch.ones(1, 5)),
     (BAD, r"attention_mask \(shape \(1, 5\)\) does not match input_ids \(shape \(1, 7\)\)")),
    (56, "3-D ids as 2-D", lambda: same(gen(IDS[None]), gen(IDS)), is_true),
    (57, "stop_strings without tokenizer", lambda: gen(stop_strings=["w4"]), (BAD, "stop_strings need the tokenizer")),
    (57, "streamer with batch 2", lambda: gen(random_ids(2, 7), streamer=TextStreamer(tiny_tokenizer())),
     (BAD, "streaming takes one prompt at a time, got 2")),
    (57, "pixel_values to a text model", lambda: gen(pixel_values=torch.zeros(1, 3, 28, 28)),
     (ValueError, "is a text model and takes no images")),
    (57, "commit later", lambda: gen(commit="later"), (BAD, "commit must be 'fused' or 'separate'")),
    (58, "a policy that commits nothing ends", lambda: text_model().generate(
        random_ids(1, 8, seed=1), max_new_tokens=12, steps=4, remasking_strategy=CommitsNothing(),
        return_dict_in_generate=True).block_steps, lambda steps: steps == [[4, 4, 4]]),
    (59, "a policy of the wrong shape", lambda: gen(remasking_strategy=WrongShape()),
     (BAD, r"WrongShape\.select returned a torch\.bool tensor of shape \(1, 3\); .*\(N, B\) = \(1, 4\)")),
    (59, "a policy of the wrong dtype", lambda: gen(remasking_strategy=WrongDtype()),
     (BAD, r"WrongDtype\.select returned a torch\.int64 tensor .*bool tensor")),
    (60, "batch of mixed lengths = singles", batch_equals_singles, is_true),
    (61, "seeded sampling repeats", lambda: same(seeded(3), seeded(3)), is_true),
    (73, "pixels without image tokens", lambda: vl_gen(image_prompt([5, 6], 0, [7, 1])[None],
     pixel_values=image(4, 6)[0], image_grid_thw=image(4, 6)[1]), (BAD, "the images give 6 image tokens")),
    (73, "image tokens without pixels", lambda: vl_gen(image_prompt([5], 6, [7, 1])[None]),
     (BAD, "6 image tokens but no images were given")),
    (73, "2 placeholders, 1 image", lambda: vl_with_image(placeholders=2), (BAD, "holds 12 placeholders")),
    (74, "no image_grid_thw", lambda: vl_gen(image_prompt([5], 6, [7, 1])[None], pixel_values=image(4, 6)[0]),
     (BAD, "need image_grid_thw")),
    (75, "a wrong image_grid_thw", lambda: vl_with_image(grid=torch.tensor([[1, 4, 4]])),
     (BAD, "image_grid_thw describes 16 patches .* pixel_values holds 24 rows")),
    (75, "a wrong image_grid_thw, no cache", lambda: vl_with_image(grid=torch.tensor([[1, 6, 6]]), use_cache=False),
     (BAD, "image_grid_thw describes 36 patches")),
    (76, "VLM batch of two image sizes = singles", vl_batch_equals_singles, is_true),
    (77, "every label -100", lambda: train_forward(lambda ids: torch.full_like(ids, -100)),
     (ValueError, "every label is -100")),
    (77, "labels of the wrong shape", lambda: train_forward(lambda ids: ids[:, :5]),
     (ValueError, "must have the shape of input_ids")),
]
ROWS = sorted({row for row, *_ in CASES})


@pytest.mark.parametrize("row,description,call,expected", CASES, ids=[f"{row}: {text}" for row, text, *_ in CASES])
def test_probe_row(row, description, call, expected):
    if isinstance(expected, tuple):
        error, pattern = expected
        with pytest.raises(error, match=pattern):
            call()
    else:
        assert expected(call()), f"row {row}: {description}"
