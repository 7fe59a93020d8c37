"""The block-diffusion loss (SPEC §2.5), a pure function of logits, targets and noise levels, and the terms a
translation may add to it to keep its source (`Objective`)."""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

LOSS_AVERAGES = ("supervised_rows", "all_rows")


def diffusion_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    noise_level: torch.Tensor,
    sample_index: torch.Tensor,
    num_supervised: torch.Tensor,
    average: str = "supervised_rows",
) -> torch.Tensor:
    """Mean over samples of  sum_{masked i} CE(logits_i, x0_i) / t_i  /  (supervised tokens of the sample).

    logits (M, V) and targets (M,) at the M masked positions of the batch; noise_level (M,) the t of each
    position's block; sample_index (M,) the sample each position belongs to; num_supervised (N,).
    average "supervised_rows": samples without supervised tokens are left out of the mean. "all_rows" (the
    original DiffusionVL code): the mean is over all N samples, those without supervision adding 0. With one
    block per sample this is LLaDA's masked-diffusion SFT loss.
    """
    if average not in LOSS_AVERAGES:
        raise ValueError(f"average must be one of {', '.join(map(repr, LOSS_AVERAGES))}, got {average!r}.")
    if not bool((num_supervised > 0).any()):
        raise ValueError("no supervised tokens in the batch: every label is -100. Label at least the answer tokens.")
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    per_token = ce / noise_level.float() / num_supervised[sample_index].float()
    per_sample = torch.zeros(num_supervised.shape, device=logits.device).index_add(0, sample_index, per_token)
    rows = (num_supervised > 0).sum() if average == "supervised_rows" else num_supervised.numel()
    return per_sample.sum() / rows


AR_AVERAGES = ("per_token", "per_sample")


def autoregressive_loss(logits: torch.Tensor, labels: torch.Tensor, average: str = "per_token") -> torch.Tensor:
    """Next-token cross-entropy: logits (N, L, V) at position i predict labels (N, L) at i + 1 (-100: unsupervised).

    average "per_token": the mean over every supervised token of the batch (transformers' own loss), so a long
    answer outweighs a short one. "per_sample": each sample's mean, then the mean over samples that have
    supervised tokens, so a one-token answer weighs as much as a caption (as the diffusion loss does).
    """
    if average not in AR_AVERAGES:
        raise ValueError(f"average must be one of {', '.join(map(repr, AR_AVERAGES))}, got {average!r}.")
    targets = labels[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100, reduction="none")
    counts = (targets != -100).sum(1)
    if not bool((counts > 0).any()):
        raise ValueError("no supervised tokens in the batch: every label is -100. Label at least the answer tokens.")
    if average == "per_token":
        return ce.sum() / counts.sum()
    rows = counts > 0
    return (ce.sum(1)[rows] / counts[rows]).mean()


# ---- terms that keep the source (options of training; each weight 0 leaves the loss above exactly as it is)


@dataclass(frozen=True)
class Objective:
    """Weights of the terms added to the block-diffusion loss (all 0: the loss is `diffusion_loss` alone).

    ar: next-token cross-entropy on the clean stream's supervised tokens (`autoregressive_loss`), which keeps the
        model's own causal mode; it needs causal context, where a clean state sees only the tokens before it.
    distill: `distillation_loss` at the masked positions against the source, at `temperature`.
    confidence: `confidence_loss` at the masked positions (LLaDA 2.0's CAP), which raises tokens per forward.
    teacher: the source for distillation. None: the model's own base with its LoRA adapters off (no second copy);
        a full finetune passes a frozen copy of the model as training started (training.train builds it)."""

    ar: float = 0.0
    distill: float = 0.0
    temperature: float = 1.0
    confidence: float = 0.0
    teacher: object = field(default=None, compare=False, repr=False)

    @property
    def extra(self) -> bool:
        return bool(self.ar or self.distill or self.confidence)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of the tempered distributions, times temperature^2 (Hinton's scaling), averaged over
    the M positions. student, teacher (M, V) logits; the teacher carries no gradient."""
    if student.shape[0] == 0:
        return student.sum() * 0.0
    log_student = F.log_softmax(student.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher.detach().float() / temperature, dim=-1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(-1)
    return kl.mean() * temperature**2


def confidence_loss(student: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the student's distribution at the positions (M, V) whose argmax is already the target (M,):
    it sharpens what the model gets right, so more positions pass a confidence threshold. 0 when none is right."""
    right = student.argmax(-1) == targets
    if not bool(right.any()):
        return student.sum() * 0.0
    log_p = F.log_softmax(student[right].float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1).mean()
