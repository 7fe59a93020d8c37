"""Policy logic on scripted confidences: no model involved."""

import torch

from diffusionvl.decoding.policies import (
    LowConfidenceDynamic,
    LowConfidenceStatic,
    StepContext,
    Threshold,
    commit_step,
    settle_after_end,
    static_schedule,
    step_quota,
)
from diffusionvl.decoding.sampling import filter_logits, propose

CONFIDENCE = torch.tensor([[0.95, 0.20, 0.91, 0.50], [0.10, 0.30, 0.20, 0.40]])
MASKED = torch.tensor([[True, True, True, False], [True, True, True, True]])


def context(quota):
    return StepContext(step=0, steps=4, quota=torch.tensor(quota))


def test_static_schedule_spreads_the_block_size_the_remainder_over_the_first_steps():
    assert static_schedule(8, 4) == [2, 2, 2, 2]
    assert static_schedule(4, 3) == [2, 1, 1]
    assert static_schedule(10, 4) == [3, 3, 2, 2]
    assert static_schedule(4, 1) == [4]
    assert static_schedule(3, 4) == [1, 1, 1, 0]  # the full-sequence baseline may ask for more steps than tokens


def test_the_quota_is_capped_at_the_masks_left():
    masked = torch.tensor([[False, True, True, True], [False, False, False, True]])
    assert step_quota([2, 1, 1], 0, masked).tolist() == [2, 1]
    assert step_quota([2, 1, 1], 1, masked).tolist() == [1, 1]


def test_a_first_block_with_a_prompt_token_commits_2_then_1_in_two_steps():
    """P = 5, B = 4, S = 3: one fixed prompt token and 3 masks. The quota spreads B = 4 as [2, 1, 1], so the
    block is full after two steps (spreading the 3 masks would commit 1, 1, 1 in three)."""
    confidence = torch.tensor([[0.0, 0.3, 0.9, 0.5]])
    token = torch.tensor([[0, 11, 12, 13]])
    block = torch.tensor([[7, 95, 95, 95]])
    masked = block == 95
    schedule, committed = static_schedule(4, 3), []
    for step in range(3):
        if not masked.any():
            break
        context = StepContext(step, 3, step_quota(schedule, step, masked))
        block, left = commit_step(LowConfidenceStatic(), token, confidence, block, masked, context)
        committed.append(int((masked & ~left).sum()))
        masked = left
    assert committed == [2, 1] and block.tolist() == [[7, 11, 12, 13]]


def test_static_commits_the_quota_most_confident_masked_positions():
    commit = LowConfidenceStatic().select(CONFIDENCE, MASKED, context([2, 1]))
    assert commit.tolist() == [[True, False, True, False], [False, False, False, True]]


def test_dynamic_commits_everything_confident_with_the_quota_as_floor():
    commit = LowConfidenceDynamic(threshold=0.9).select(CONFIDENCE, MASKED, context([1, 2]))
    assert commit.tolist() == [[True, False, True, False], [False, True, False, True]]


def test_threshold_commits_at_least_one_and_never_an_unmasked_position():
    commit = Threshold(threshold=0.99).select(CONFIDENCE, MASKED, context([0, 0]))
    assert commit.sum(1).tolist() == [1, 1]
    assert not (commit & ~MASKED).any()


def test_propose_never_picks_suppressed_ids_even_when_they_dominate():
    logits = torch.zeros(2, 3, 10)
    logits[..., 7] = 100.0
    logits[..., 0] = 90.0
    token, confidence = propose(logits, never=(7, 0), temperature=0.0)
    assert not token.eq(7).any() and not token.eq(0).any()
    sampled, _ = propose(logits, never=(7, 0), temperature=2.0, generator=torch.Generator().manual_seed(0))
    assert not sampled.eq(7).any() and not sampled.eq(0).any()
    assert torch.allclose(confidence, torch.full_like(confidence, 0.125))  # 8 equal survivors


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2, top_p=None)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_k=None, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_k=None, top_p=0.85)).tolist() == [[False, False, False, True]]


def test_a_block_whose_answer_ended_is_settled_without_more_steps():
    M, E = 99, 2  # mask and end-of-turn ids
    block = torch.tensor([
        [7, E, M, M],  # decided: end-of-turn committed, nothing masked before it
        [M, E, M, M],  # not yet: a mask before the end-of-turn
        [E, 5, M, M],  # an end-of-turn of the prompt (not an answer position) decides nothing
        [5, 6, 7, M],  # no end-of-turn
    ])
    answer = torch.tensor([[True] * 4, [True] * 4, [False, True, True, True], [True] * 4])
    masked = block == M
    settled, still = settle_after_end(block, masked, answer, E)
    assert settled.tolist() == [[7, E, E, E], [M, E, M, M], [E, 5, M, M], [5, 6, 7, M]]
    assert still.tolist() == [[False] * 4, [True, False, True, True], [False, False, True, True],
                              [False, False, False, True]]
