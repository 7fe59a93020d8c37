"""Unmasking policies: which masked positions of a block to commit at a denoising step.

Every policy is a small object with one method, `select(confidence, masked, context) -> commit`, so one block
loop serves them all and users can pass their own. Tensors are (N, B): N rows, B positions of the block.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepContext:
    """What a policy knows besides the scores. `quota` (N,) is what the static schedule commits this step."""

    step: int
    steps: int
    quota: torch.Tensor


def static_schedule(masked_count: torch.Tensor, steps: int) -> torch.Tensor:
    """Spread each row's masked positions over `steps` steps, the first `count % steps` steps one more. (N, S)."""
    base = (masked_count // steps)[:, None]
    extra = torch.arange(steps, device=masked_count.device)[None] < (masked_count % steps)[:, None]
    return base + extra.long()


def top_k_mask(confidence: torch.Tensor, masked: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The k[i] most confident masked positions of each row, vectorised (ranks from one sort, no .item())."""
    scores = confidence.masked_fill(~masked, float("-inf"))
    order = scores.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return (ranks < k[:, None]) & masked


class UnmaskingPolicy:
    """Interface: return a (N, B) bool tensor, a subset of `masked`, of the positions to commit now."""

    def select(self, confidence: torch.Tensor, masked: torch.Tensor, context: StepContext) -> torch.Tensor:
        raise NotImplementedError


class LowConfidenceStatic(UnmaskingPolicy):
    """Commit the `quota` most confident masked positions: exactly B tokens over S steps per block."""

    def select(self, confidence, masked, context):
        return top_k_mask(confidence, masked, context.quota)


@dataclass(frozen=True)
class LowConfidenceDynamic(UnmaskingPolicy):
    """Commit every masked position above `threshold`; if fewer than the static quota qualify, the top quota."""

    threshold: float = 0.9

    def select(self, confidence, masked, context):
        confident = masked & (confidence > self.threshold)
        return confident | top_k_mask(confidence, masked, context.quota)


@dataclass(frozen=True)
class Threshold(UnmaskingPolicy):
    """Fast-dLLM's rule: commit every masked position above `threshold`, at least the best one per step.

    `steps` is only a cap: like every policy, the block loop commits whatever is still masked at the last step.
    """

    threshold: float = 0.9

    def select(self, confidence, masked, context):
        best = top_k_mask(confidence, masked, torch.ones_like(context.quota))
        return (masked & (confidence > self.threshold)) | best


def commit_step(policy, token, confidence, block, masked, context: StepContext):
    """Apply one denoising step to a block: the policy picks positions, the last step of the budget takes all.

    token, confidence (N, B) are the proposals; returns the updated (block, still masked).
    """
    commit = policy.select(confidence, masked, context) & masked
    if context.step >= context.steps - 1:
        commit = masked
    return torch.where(commit, token, block), masked & ~commit


POLICIES = {
    "low_confidence_static": lambda threshold: LowConfidenceStatic(),
    "low_confidence_dynamic": LowConfidenceDynamic,
    "threshold": Threshold,
}


def resolve_policy(strategy, threshold: float) -> UnmaskingPolicy:
    """A policy object from its name (with `threshold` for the dynamic ones), or the user's own object."""
    if hasattr(strategy, "select"):
        return strategy
    if strategy not in POLICIES:
        raise ValueError(f"unknown remasking_strategy {strategy!r}; choose one of {sorted(POLICIES)} or pass a policy object.")
    return POLICIES[strategy](threshold)
