"""The noising process, the two-stream layout and the loss, on small hand-checkable inputs."""

import pytest
import torch
from conftest import EOT_ID, MASK_ID, prompt_answer_batch, random_ids, wrap
from huggingface_hub.errors import StrictDataclassError

from diffusionvl import DiffusionVLConfig, diffusion_loss
from diffusionvl.modeling.masks import CLEAN, NOISY, block_diffusion_rule
from diffusionvl.modeling.noise import IGNORE, align_to_blocks, apply_noise, sample_noise_levels, two_stream_layout


def test_align_pads_each_row_to_a_block_boundary_with_supervised_eot():
    ids = torch.tensor([[7, 8, 9, 10, 11, 0, 0], [0, 0, 5, 6, 7, 8, 9]])
    labels = torch.tensor([[-100, -100, 9, 10, 11, -100, -100], [-100, -100, -100, -100, 7, 8, 9]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1]])
    out_ids, out_labels, valid = align_to_blocks(ids, labels, mask, block_size=4, eot_id=EOT_ID, pad_id=0)
    assert out_ids.tolist() == [[7, 8, 9, 10, 11, 2, 2, 2], [5, 6, 7, 8, 9, 2, 2, 2]]
    assert out_labels[0].tolist() == [-100, -100, 9, 10, 11, 2, 2, 2]
    assert out_labels[1].tolist() == [-100, -100, 7, 8, 9, 2, 2, 2]
    assert valid.all()


def test_align_drops_what_follows_the_last_supervised_token():
    # a chat template's "\n" (id 13) after the end-of-turn: never generated, so it must not sit visible in a block
    ids = torch.tensor([[7, 8, 9, EOT_ID, 13, 0], [7, 8, 9, 10, 11, 13]])
    labels = torch.tensor([[-100, -100, 9, EOT_ID, -100, -100], [-100, -100, -100, -100, -100, -100]])
    out_ids, out_labels, _ = align_to_blocks(ids, labels, (ids != 0).long(), 4, EOT_ID, 0)
    assert out_ids[0].tolist() == [7, 8, 9, EOT_ID, 0, 0, 0, 0]  # ends on a block boundary at its end-of-turn
    assert out_labels[0].tolist() == [-100, -100, 9, EOT_ID] + [-100] * 4
    assert out_ids[1].tolist() == [7, 8, 9, 10, 11, 13, 0, 0]  # without supervision: kept whole, no EOT after it


def test_align_gives_a_row_without_an_answer_no_end_of_turn():
    """A row with no supervised label has no answer to end: EOT labels after it would teach the model to stop
    before answering. Its tail is padding, unsupervised and not attended; an answered row still gets its EOT."""
    ids = torch.tensor([[7, 8, 9, 10, 11, 0, 0, 0], [7, 8, 9, 10, 11, 0, 0, 0]])
    labels = torch.tensor([[-100] * 8, [-100, -100, -100, 10, 11, -100, -100, -100]])
    out_ids, out_labels, valid = align_to_blocks(ids, labels, (ids != 0).long(), 4, EOT_ID, 0)
    assert out_ids.tolist() == [[7, 8, 9, 10, 11, 0, 0, 0], [7, 8, 9, 10, 11, EOT_ID, EOT_ID, EOT_ID]]
    assert out_labels[0].eq(IGNORE).all() and (out_labels[0] == EOT_ID).sum() == 0
    assert out_labels[1].tolist() == [-100, -100, -100, 10, 11, EOT_ID, EOT_ID, EOT_ID]
    assert valid.tolist() == [[True] * 5 + [False] * 3, [True] * 8]


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


# A 2 x 3 block batch whose first block is prompt-only, and the first draws of torch.rand under seed 0.
TINY_SUPERVISED = torch.tensor([[False, True, True], [True, True, True]])
SEED0_RAND = [0.49625658988952637, 0.7682217955589294, 0.08847743272781372, 0.13203048706054688,
              0.30742281675338745, 0.6340786814689636]
SEED0_PERM_AFTER_5 = [4, 0, 3, 1, 2]  # torch.randperm(5) right after 5 torch.rand draws


def test_seed0_draws_are_the_ones_the_hand_computations_use():
    assert torch.rand(6, generator=torch.Generator().manual_seed(0)).tolist() == SEED0_RAND
    g = torch.Generator().manual_seed(0)
    torch.rand(5, generator=g)
    assert torch.randperm(5, generator=g).tolist() == SEED0_PERM_AFTER_5


def test_original_strata_cover_every_block_in_block_order():
    t = sample_noise_levels(TINY_SUPERVISED, 1e-3, 1.0, True, torch.Generator().manual_seed(0), "all_blocks_ordered")
    u = SEED0_RAND
    # t_k = eps_min + (eps_max - eps_min) * (k + u_k) / (N * nb), N * nb = 6. Prompt-only block 0 uses up stratum 0
    # and reads t = 1 (never used).
    expected = [[1.0, 1e-3 + 0.999 * (1 + u[1]) / 6, 1e-3 + 0.999 * (2 + u[2]) / 6],
                [1e-3 + 0.999 * (3 + u[3]) / 6, 1e-3 + 0.999 * (4 + u[4]) / 6, 1e-3 + 0.999 * (5 + u[5]) / 6]]
    assert torch.allclose(t, torch.tensor(expected), rtol=0, atol=1e-6)
    assert torch.allclose(t[1], torch.tensor([0.52248308, 0.71818590, 0.93907410]), rtol=0, atol=1e-6)


def test_default_strata_cover_supervised_blocks_in_shuffled_order():
    g = torch.Generator().manual_seed(0)
    t = sample_noise_levels(TINY_SUPERVISED, 1e-3, 1.0, True, g)
    # 5 supervised blocks, row-major: draws u_0..u_4, then their strata from randperm(5) on the same generator.
    u, strata = SEED0_RAND[:5], SEED0_PERM_AFTER_5
    expected = [1e-3 + 0.999 * (s + v) / 5 for s, v in zip(strata, u)]
    assert t[0, 0] == 1 and torch.allclose(t[TINY_SUPERVISED], torch.tensor(expected), rtol=0, atol=1e-6)
    hit = ((t[TINY_SUPERVISED] - 1e-3) / 0.999 * 5).floor().long()
    assert sorted(hit.tolist()) == list(range(5))  # one draw per stratum


def test_sample_noise_levels_rejects_unknown_strata():
    with pytest.raises(ValueError, match="supervised_shuffled"):
        sample_noise_levels(TINY_SUPERVISED, 1e-3, 1.0, True, strata="random")


def test_model_with_original_strata_hands_block_k_of_the_batch_stratum_k():
    model = wrap(block_size=4, noise_strata="all_blocks_ordered")
    ids, labels = prompt_answer_batch(n=2, length=16, prompt=9)  # blocks 0, 1 of each row are prompt-only
    batch = model.add_noise(ids, labels, generator=torch.Generator().manual_seed(0))
    supervised = batch.supervised_blocks  # (2, 4)
    stratum = ((batch.block_noise - 1e-3) / 0.999 * 8).floor().long()  # N * nb = 8 strata
    assert stratum[supervised].tolist() == [2, 3, 6, 7]
    assert (batch.block_noise[~supervised] == 1).all()
    assert not batch.masked[batch.labels == IGNORE].any()


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


def test_loss_over_all_rows_counts_a_row_without_supervision_as_zero():
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    targets, t, sample = torch.tensor([1, 2, 3]), torch.tensor([0.5, 0.25, 1.0]), torch.tensor([0, 0, 1])
    num_supervised = torch.tensor([4, 2, 0])
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    expected = ((ce[0] / 0.5 + ce[1] / 0.25) / 4 + (ce[2] / 1.0) / 2) / 3  # 3 rows, the third adds 0
    all_rows = diffusion_loss(logits, targets, t, sample, num_supervised, "all_rows")
    assert torch.allclose(all_rows, expected)
    assert torch.allclose(all_rows, diffusion_loss(logits, targets, t, sample, num_supervised) * 2 / 3)
    with pytest.raises(ValueError, match="all_rows"):
        diffusion_loss(logits, targets, t, sample, num_supervised, "tokens")


# Losses of `wrap(block_size=4)` under seed 0 computed before noise_strata and loss_average existed, on
# `prompt_answer_batch()` and on `prompt_answer_batch(length=16)` with row 1 unlabelled: the defaults keep them.
PINNED_LOSS = 3.3399276733398438
PINNED_LOSS_ROW_1_UNSUPERVISED = 3.3031187057495117


def test_default_options_keep_the_pinned_loss():
    ids, labels = prompt_answer_batch()
    loss = wrap(block_size=4)(input_ids=ids, labels=labels, generator=torch.Generator().manual_seed(0)).loss
    assert loss.item() == pytest.approx(PINNED_LOSS, rel=1e-6)


def test_all_rows_average_scales_the_model_loss_by_supervised_rows_over_rows():
    ids, labels = prompt_answer_batch(length=16)
    # 2 of 3 rows supervised. The rows are block-aligned, so no EOT padding labels row 1 again; the noise draw
    # does not depend on loss_average.
    labels[1] = IGNORE
    losses = {
        average: wrap(block_size=4, loss_average=average)(
            input_ids=ids, labels=labels, generator=torch.Generator().manual_seed(0)
        ).loss.item()
        for average in ("supervised_rows", "all_rows")
    }
    assert losses["supervised_rows"] == pytest.approx(PINNED_LOSS_ROW_1_UNSUPERVISED, rel=1e-6)
    assert losses["all_rows"] == pytest.approx(losses["supervised_rows"] * 2 / 3, rel=1e-6)


def test_config_without_the_new_fields_loads_the_defaults_and_rejects_unknown_values():
    old = DiffusionVLConfig(mask_token_id=MASK_ID).to_dict()
    del old["noise_strata"], old["loss_average"]
    config = DiffusionVLConfig.from_dict(old)
    assert (config.noise_strata, config.loss_average) == ("supervised_shuffled", "supervised_rows")
    # huggingface_hub's strict dataclass checks the Literal before __post_init__; either error lists the values.
    with pytest.raises((ValueError, StrictDataclassError), match="all_blocks_ordered"):
        DiffusionVLConfig(noise_strata="ordered")
    with pytest.raises((ValueError, StrictDataclassError), match="all_rows"):
        DiffusionVLConfig(loss_average="mean")


def test_autoregressive_loss_per_token_is_transformers_loss_and_per_sample_weighs_rows_alike():
    from diffusionvl.modeling.loss import autoregressive_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.tensor([[-100, -100, 3, 4, 5, 6], [-100, -100, -100, -100, -100, 7]])
    per_token = autoregressive_loss(logits, labels)
    shifted = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1))
    assert torch.allclose(per_token, shifted)
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none")
    row0, row1 = ce[0, 1:].mean(), ce[1, 4]  # 4 supervised targets vs 1: each row counts once
    assert torch.allclose(autoregressive_loss(logits, labels, "per_sample"), (row0 + row1) / 2)
    with pytest.raises(ValueError, match="every label is -100"):
        autoregressive_loss(logits, torch.full_like(labels, -100))
