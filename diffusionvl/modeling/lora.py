"""LoRA through PEFT: adapters injected into the wrapped model's linear layers, recorded in the config so a
checkpoint reloads strictly (and a run resumes exactly), and merged back into plain weights at the end."""

from torch import nn

from ..errors import require_extra

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def inject_lora(model: nn.Module, settings: dict) -> None:
    """Add LoRA adapters to `model` in place. settings: peft LoraConfig fields (r, lora_alpha, target_modules...)."""
    require_extra("lora", "LoRA", "peft")
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(**settings), model)


def add_lora(model, rank: int, alpha: int = 16, targets=DEFAULT_TARGETS, dropout: float = 0.0) -> None:
    """Adapters in the wrapped model of a DiffusionVL, recorded in `model.config.lora`. Afterwards only the
    adapters require gradients (PEFT's rule); unfreeze other parts explicitly if they should train too."""
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}.")
    settings = {"r": rank, "lora_alpha": alpha, "target_modules": list(targets), "lora_dropout": dropout}
    inject_lora(model.model, settings)
    model.config.lora = settings


def merge_lora(model) -> None:
    """Fold every adapter into its base weight and put the plain layer back: the model saves as a DiffusionVL
    without LoRA."""
    parents = {name: module for name, module in model.named_modules()}
    for name, module in list(model.named_modules()):
        if hasattr(module, "base_layer") and hasattr(module, "merge"):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(parents[parent_name], child, module.base_layer)
    model.config.lora = None
