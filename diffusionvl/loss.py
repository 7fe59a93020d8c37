"""The block-diffusion loss (SPEC §2.5), a pure function of logits, targets and noise levels."""

import torch
import torch.nn.functional as F


def diffusion_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    noise_level: torch.Tensor,
    sample_index: torch.Tensor,
    num_supervised: torch.Tensor,
) -> torch.Tensor:
    """Mean over samples of  sum_{masked i} CE(logits_i, x0_i) / t_i  /  (supervised tokens of the sample).

    logits (M, V) and targets (M,) at the M masked positions of the batch; noise_level (M,) the t of each
    position's block; sample_index (M,) the sample each position belongs to; num_supervised (N,).
    Samples without supervised tokens are left out of the mean. With one block per sample this is LLaDA's
    masked-diffusion SFT loss.
    """
    if not bool((num_supervised > 0).any()):
        raise ValueError("no supervised tokens in the batch: every label is -100. Label at least the answer tokens.")
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    per_token = ce / noise_level.float() / num_supervised[sample_index].float()
    per_sample = torch.zeros(num_supervised.shape, device=logits.device).index_add(0, sample_index, per_token)
    return per_sample.sum() / (num_supervised > 0).sum()
