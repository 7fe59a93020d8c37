"""LoRA through PEFT: adapters injected into the wrapped model's linear layers, recorded in the config so a
checkpoint reloads strictly (and a run resumes exactly), and merged back into plain weights at the end.

Draft-only adapters (`DiffusionVLConfig.lora_scope="noisy"`) act on the noisy stream alone: the clean stream,
the K/V that decoding commits and the model's causal mode stay exactly the base model's, so a causal-context
translation keeps its source bit for bit and only its drafts are learnt. They are never merged: a merged delta
would act on every token.
"""

from contextlib import contextmanager

import torch
from torch import nn

from ..errors import require_extra

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def inject_lora(model: nn.Module, settings: dict) -> None:
    """Add LoRA adapters to `model` in place. settings: peft LoraConfig fields (r, lora_alpha, target_modules...)."""
    require_extra("lora", "LoRA", "peft")
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(**settings), model)


def add_lora(model, rank: int, alpha: int = 16, targets=DEFAULT_TARGETS, dropout: float = 0.0,
             scope: str = "all") -> None:
    """Adapters in the wrapped model of a DiffusionVL, recorded in `model.config.lora` (and `lora_scope`: "all"
    tokens, or "noisy", the draft-only adapters of this module's docstring). Afterwards only the adapters require
    gradients (PEFT's rule); unfreeze other parts explicitly if they should train too."""
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}.")
    if scope not in ("all", "noisy"):
        raise ValueError(f"LoRA scope must be 'all' or 'noisy', got {scope!r}.")
    settings = {"r": rank, "lora_alpha": alpha, "target_modules": list(targets), "lora_dropout": dropout}
    inject_lora(model.model, settings)
    model.config.lora, model.config.lora_scope = settings, scope


class NoisyOnlyGate:
    """Multiplies every LoRA delta (N, Q, out) of `model` by a gate (1, Q, 1): 1 on the columns of the noisy
    stream, 0 elsewhere. Outside `on(...)` the gate is 0, so a forward that names no noisy columns (a prefill, the
    causal mode, transformers' own generate) runs the base model. The delta is computed and zeroed rather than
    skipped: a rank-r product costs a few percent of the layer it adapts."""

    def __init__(self, model: nn.Module):
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.gate: torch.Tensor | None = None
        self.handles = [up.register_forward_hook(self._scale) for layer in model.modules()
                        if isinstance(layer, BaseTunerLayer) for up in layer.lora_B.values()]

    def _scale(self, module, args, output: torch.Tensor) -> torch.Tensor:
        return output * 0.0 if self.gate is None else output * self.gate.to(output.dtype)

    @contextmanager
    def on(self, noisy: torch.Tensor):
        """For one forward: `noisy` (Q,) bool marks the columns whose tokens the adapters act on."""
        previous, self.gate = self.gate, noisy[None, :, None]
        try:
            yield
        finally:
            self.gate = previous


def merge_lora(model) -> None:
    """Fold every adapter into its base weight and put the plain layer back: the model saves as a DiffusionVL
    without LoRA. Draft-only adapters cannot be folded (the delta would act on every token): refused."""
    if getattr(model.config, "lora_scope", "all") == "noisy":
        raise ValueError("draft-only adapters (lora_scope='noisy') act on the noisy stream alone and cannot be merged "
                         "into the weights; save the model with its adapters (save_pretrained keeps them).")
    parents = {name: module for name, module in model.named_modules()}
    for name, module in list(model.named_modules()):
        if hasattr(module, "base_layer") and hasattr(module, "merge"):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(parents[parent_name], child, module.base_layer)
    model.config.lora = None
