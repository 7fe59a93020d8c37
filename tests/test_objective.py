"""The noising process, the two-stream layout and the loss, on small hand-checkable inputs."""

import pytest
import torch
from conftest import EOT_ID, MASK_ID, prompt_answer_batch, random_ids, wrap

from diffusionvl import diffusion_loss
from diffusionvl.masks import CLEAN, NOISY, block_diffusion_rule
from diffusionvl.noise import IGNORE, align_to_blocks, apply_noise, sample_noise_levels, two_stream_layout


def test_align_pads_each_row_to_a_block_boundary_with_supervised_eot():
    ids = torch.tensor([[7, 8, 9, 10, 11, 0, 0], [0, 0, 5, 6, 7, 8, 9]])
    labels = torch.tensor([[-100, -100, 9, 10, 11, -100, -100], [-100, -100, -100, -100, 7, 8, 9]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1]])
    out_ids, out_labels, valid = align_to_blocks(ids, labels, mask, block_size=4, eot_id=EOT_ID, pad_id=0)
    assert out_ids.tolist() == [[7, 8, 9, 10, 11, 2, 2, 2], [5, 6, 7, 8, 9, 2, 2, 2]]
    assert out_labels[0].tolist() == [-100, -100, 9, 10, 11, 2, 2, 2]
    assert out_labels[1].tolist() == [-100, -100, 7, 8, 9, 2, 2, 2]
    assert valid.all()


def test_align_leaves_aligned_rows_alone_and_pads_short_rows():
    ids = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10], [3, 4, 5, 0, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    out_ids, out_labels, valid = align_to_blocks(ids, ids.clone(), mask, 4, EOT_ID, 0)
    assert out_ids[0].tolist() == [3, 4, 5, 6, 7, 8, 9, 10]
    assert out_ids[1].tolist() == [3, 4, 5, 2, 0, 0, 0, 0]
    assert valid[1].tolist() == [True] * 4 + [False] * 4
    assert out_labels[1, 4:].eq(IGNORE).all()


def test_align_rejects_holes_in_the_attention_mask():
    ids = torch.arange(3, 11)[None]
    with pytest.raises(ValueError, match="contiguous"):
        align_to_blocks(ids, ids, torch.tensor([[1, 1, 0, 1, 1, 1, 1, 1]]), 4, EOT_ID, 0)


def test_noise_levels_are_stratified_and_in_random_block_order():
    supervised = torch.ones(2, 16, dtype=torch.bool)
    supervised[1, :3] = False  # prompt-only blocks get no stratum
    t = sample_noise_levels(supervised, 1e-3, 1.0, antithetic=True, generator=torch.Generator().manual_seed(0))
    assert (t[1, :3] == 1).all()
    u = (t[supervised] - 1e-3) / (1 - 1e-3)
    strata = (u * supervised.sum()).floor().long().sort().values
    assert strata.tolist() == list(range(int(supervised.sum())))  # exactly one draw per stratum
    assert not torch.equal(t[0], t[0].sort().values)  # strata are not handed out in block order


def test_masking_touches_supervised_positions_only_with_probability_t():
    ids = random_ids(64, 16, seed=1)
    labels = ids.clone()
    labels[:, :4] = IGNORE
    t = torch.tensor([1.0, 0.5, 0.5, 0.001]).repeat(64, 1)
    batch = apply_noise(ids, labels, torch.ones_like(ids, dtype=torch.bool), t, 4, MASK_ID, torch.Generator())
    assert not batch.masked[:, :4].any()
    assert batch.noisy_ids[batch.masked].eq(MASK_ID).all()
    assert torch.equal(batch.noisy_ids[~batch.masked], ids[~batch.masked])
    rate = batch.masked[:, 4:12].float().mean()
    assert 0.4 < rate < 0.6
    assert batch.masked[:, 12:].sum() <= 2


def test_attention_rule_matches_the_four_written_rules():
    # two blocks of size 2; tokens: noisy b0 b0 b1 b1 | clean b0 b0 b1 b1
    block = torch.tensor([[0, 0, 1, 1, 0, 0, 1, 1]])
    stream = torch.tensor([[NOISY] * 4 + [CLEAN] * 4])
    valid = torch.ones_like(block, dtype=torch.bool)
    allowed = block_diffusion_rule(block, stream, block, stream, valid)[0].int()
    assert allowed.tolist() == [
        [1, 1, 0, 0, 0, 0, 0, 0],  # noisy b0: its own noisy block, no earlier clean block
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],  # noisy b1: own noisy block + clean b0
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],  # clean b0: block-causal, never noisy keys
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1],
    ]


def test_cheap_noisy_stream_holds_only_supervised_blocks():
    model = wrap(block_size=4)
    ids, labels = prompt_answer_batch(n=2, length=16, prompt=9)  # blocks 0,1 prompt-only
    batch = model.add_noise(ids, labels, generator=torch.Generator().manual_seed(0))
    cheap = two_stream_layout(batch, cheap=True, dtype=torch.float32)
    full = two_stream_layout(batch, cheap=False, dtype=torch.float32)
    assert cheap.noisy_positions[0].tolist() == list(range(8, 16))
    assert full.noisy_positions.shape[1] == 16
    assert cheap.input_ids.shape[1] == 8 + 16 and full.input_ids.shape[1] == 32


def test_loss_is_the_weighted_mean_written_in_the_spec():
    logits = torch.randn(3, 5)
    targets = torch.tensor([1, 2, 3])
    t = torch.tensor([0.5, 0.25, 1.0])
    sample = torch.tensor([0, 0, 1])
    num_supervised = torch.tensor([4, 2, 0])  # the third sample has nothing supervised and is left out
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    expected = ((ce[0] / 0.5 + ce[1] / 0.25) / 4 + (ce[2] / 1.0) / 2) / 2
    assert torch.allclose(diffusion_loss(logits, targets, t, sample, num_supervised), expected)


def test_loss_rejects_a_batch_without_supervision():
    with pytest.raises(ValueError, match="-100"):
        diffusion_loss(torch.randn(0, 5), torch.zeros(0, dtype=torch.long), torch.ones(0), torch.zeros(0).long(),
                       torch.tensor([0, 0]))
