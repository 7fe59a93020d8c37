"""Policy logic on scripted confidences: no model involved."""

import torch

from diffusionvl.policies import LowConfidenceDynamic, LowConfidenceStatic, StepContext, Threshold, static_schedule
from diffusionvl.sampling import filter_logits, propose

CONFIDENCE = torch.tensor([[0.95, 0.20, 0.91, 0.50], [0.10, 0.30, 0.20, 0.40]])
MASKED = torch.tensor([[True, True, True, False], [True, True, True, True]])


def context(quota):
    return StepContext(step=0, steps=4, quota=torch.tensor(quota))


def test_static_schedule_spreads_the_remainder_over_the_first_steps():
    assert static_schedule(torch.tensor([8, 3, 10]), 4).tolist() == [[2, 2, 2, 2], [1, 1, 1, 0], [3, 3, 2, 2]]


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
