"""The terms a translation may add to the block-diffusion loss to keep its source (loss.Objective): the AR loss
on the clean stream, distillation from the source at the masked positions, and the confidence term. The loss
functions are pure (loss.py); this module gathers their inputs from a model's forward."""

import torch
import torch.nn.functional as F

from ..errors import DiffusionVLError
from .loss import Objective, confidence_loss, distillation_loss
from .masks import block_diffusion_rule, to_attention_mask
from .noise import IGNORE, NoisyBatch


def source_terms(model, objective: Objective, batch: NoisyBatch, vision, clean_hidden: torch.Tensor,
                  logits: torch.Tensor, targets: torch.Tensor, where: tuple) -> torch.Tensor:
    """The weighted terms of `objective`. logits (M, V) and targets (M,) at the masked positions, which sit at
    (row, sequence position) `where`; clean_hidden (N, L, H) the clean stream's states."""
    total = logits.new_zeros(())
    if objective.ar:
        if model.config.context_attention != "causal":
            raise DiffusionVLError("the AR loss trains the clean stream's next-token predictions, which need causal "
                                   "context (a block-causal state sees the token it predicts); translate with "
                                   "context_attention='causal', or drop the AR loss weight.")
        following = batch.labels[:, 1:]
        pick = following != IGNORE  # state i predicts token i + 1
        ar_logits = model.backbone.head(clean_hidden[:, :-1][pick])
        total = total + objective.ar * F.cross_entropy(ar_logits.float(), following[pick])
    if objective.distill and _clean_stream_is_source(model, objective):
        rows, positions = where  # the clean state before each target is the source's: no second forward
        teacher = model.backbone.head(clean_hidden[rows, positions - 1]).detach().float()
        total = total + objective.distill * distillation_loss(logits, teacher, objective.temperature)
    elif objective.distill:
        teacher = source_logits(model, batch, vision, where, objective.teacher)
        total = total + objective.distill * distillation_loss(logits, teacher, objective.temperature)
    if objective.confidence:
        total = total + objective.confidence * confidence_loss(logits, targets)
    return total


def _clean_stream_is_source(model, objective) -> bool:
    """Draft-only adapters with causal context leave the clean stream the base model, token-causal: the source."""
    config = model.config
    return (objective.teacher is None and bool(config.lora) and config.lora_scope == "noisy"
            and config.context_attention == "causal")


@torch.no_grad()
def source_logits(model, batch: NoisyBatch, vision, where: tuple, teacher=None) -> torch.Tensor:
    """The source's next-token logits (M, V) for the tokens at `where`, run token-causally on the clean sequence
    (the state before each token predicts it): `teacher` (a frozen copy of the model) when given, else the base
    with its LoRA adapters off."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if teacher is not None:
        return _causal_logits(teacher, batch, vision, where).float()
    layers = [module for module in model.model.modules() if isinstance(module, BaseTunerLayer)]
    if not layers:
        raise DiffusionVLError("distillation needs a source: a LoRA finetune uses its base with the adapters off, a "
                               "full finetune a frozen copy (Objective.teacher, which `diffusionvl train` builds); "
                               "this model has neither, so it would distil from itself.")
    for layer in layers:
        layer.enable_adapters(False)
    try:
        return _causal_logits(model, batch, vision, where)
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def _causal_logits(model, batch: NoisyBatch, vision, where: tuple) -> torch.Tensor:
    rows, positions = where
    index = torch.arange(batch.clean_ids.shape[1], device=batch.clean_ids.device).expand_as(batch.clean_ids)
    causal = block_diffusion_rule(index, torch.ones_like(index), index, torch.ones_like(index), batch.valid,
                                  index, index)
    mask = to_attention_mask(causal, batch.valid, model.dtype)
    rope = model.backbone.positions(batch.clean_ids, index, batch.valid, vision)
    hidden = model.backbone.decode(model.backbone.embed(batch.clean_ids, vision), mask, rope)
    return model.backbone.head(hidden[rows, positions - 1])
