"""Unmasking policies: which masked positions of a block to commit at a denoising step.

Every policy is a small object with one method, `select(confidence, masked, context) -> commit`, so one block
loop serves them all and users can pass their own. Tensors are (N, B): N rows, B positions of the block.
"""

from dataclasses import dataclass

import torch

from ..errors import DiffusionVLError


@dataclass(frozen=True)
class StepContext:
    """What a policy knows besides the scores. `quota` (N,) is what the static schedule commits this step:
    its share of the block, capped at the positions still masked (see `step_quota`)."""

    step: int
    steps: int
    quota: torch.Tensor


def static_schedule(block_size: int, steps: int) -> list[int]:
    """Tokens each of `steps` steps may commit: B spread over S, the first B % S steps one more (SPEC §3.3).

    The original spreads the block size, not the masked count: a first block that holds leftover prompt tokens
    then finishes early (B = 4, S = 3, 3 masks: [2, 1, 1] commits 2 then 1, two steps).
    """
    return [block_size // steps + int(step < block_size % steps) for step in range(steps)]


def step_quota(schedule: list[int], step: int, masked: torch.Tensor) -> torch.Tensor:
    """(N,) quota of this step: min(schedule[step], masked positions left) per row; masked is (N, B)."""
    return masked.sum(1).clamp(max=schedule[step])


def top_k_mask(confidence: torch.Tensor, masked: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The k[i] most confident masked positions of each row, vectorised (ranks from one sort, no .item())."""
    scores = confidence.masked_fill(~masked, float("-inf"))
    order = scores.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return (ranks < k[:, None]) & masked


class UnmaskingPolicy:
    """Interface: return a (N, B) bool tensor, a subset of `masked`, of the positions to commit now. `confidence`
    (N, B) is the proposals' probability at masked positions and 0 elsewhere (no logits are computed there)."""

    def select(self, confidence: torch.Tensor, masked: torch.Tensor, context: StepContext) -> torch.Tensor:
        raise NotImplementedError


class LowConfidenceStatic(UnmaskingPolicy):
    """Commit the `quota` most confident masked positions: the block size B spread over S steps, so a block
    whose first positions hold prompt tokens needs fewer steps."""

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
    commit = policy.select(confidence, masked, context)
    _check_selection(policy, commit, masked)
    commit = commit & masked
    if context.step >= context.steps - 1:
        commit = masked
    return torch.where(commit, token, block), masked & ~commit


def settle_after_end(block: torch.Tensor, masked: torch.Tensor, answer: torch.Tensor, eot: int):
    """End a row's block early once its answer is decided: an end-of-turn token is committed at an answer position
    and every answer position before it is committed. What follows that token is cut from the output, so its
    masks are filled with end-of-turn now instead of being denoised: the same answer, fewer forwards.

    block, masked, answer (N, B); `answer` marks the positions the block generates (not leftover prompt tokens,
    which may hold an end-of-turn of an earlier turn). Returns the updated (block, still masked).
    """
    ended = (block == eot) & answer & ~masked
    positions = torch.arange(block.shape[1], device=block.device)
    first = torch.where(ended, positions, block.shape[1]).amin(1, keepdim=True)  # (N, 1); B when none
    decided = ~(masked & (positions < first)).any(1, keepdim=True) & ended.any(1, keepdim=True)
    after = decided & masked & (positions > first)
    return block.masked_fill(after, eot), masked & ~after


def _check_selection(policy, commit, masked: torch.Tensor) -> None:
    """A user policy's mistake is named here, not as a broadcast error further down."""
    is_tensor = isinstance(commit, torch.Tensor)
    if is_tensor and commit.dtype == torch.bool and commit.shape == masked.shape:
        return
    got = f"a {commit.dtype} tensor of shape {tuple(commit.shape)}" if is_tensor else f"a {type(commit).__name__}"
    raise DiffusionVLError(
        f"{type(policy).__name__}.select returned {got}; a policy must return a bool tensor of the shape of `masked`, "
        f"(N, B) = {tuple(masked.shape)}, True where a position is committed now (e.g. `(confidence > 0.9) & masked`)."
    )


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
        raise DiffusionVLError(
            f"unknown remasking_strategy {strategy!r}; choose one of {sorted(POLICIES)} or pass a policy object."
        )
    return POLICIES[strategy](threshold)
