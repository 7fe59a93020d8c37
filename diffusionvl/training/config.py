"""`TrainingConfig`: one training run, every field a `diffusionvl train` flag, checked on construction.

Kept apart from train.py and free of torch imports, so `diffusionvl train --help` answers at once.
"""

import argparse
import math
import typing
from dataclasses import MISSING, dataclass, field, fields

from ..errors import DiffusionVLError

if typing.TYPE_CHECKING:
    from ..modeling.loss import Objective


@dataclass(frozen=True)
class TrainingConfig:
    """One training run. Every field is also a `diffusionvl train` flag (underscores become dashes)."""

    data: str = field(metadata={"help": "LLaVA JSON or JSONL file"})
    model: str = field(metadata={"help": "a DiffusionVL checkpoint (diffusionvl convert) or a VisionLanguageModel"})
    output_dir: str = field(metadata={"help": "checkpoints and metrics.jsonl go here"})
    image_folder: str | None = field(default=None, metadata={"help": "image paths in the data are relative to it"})
    stage: str = field(default="diffusion", metadata={"help": "'projector' (stage 1: the projector, AR loss), "
                       "'diffusion' (stage 2), or 'autoregressive' (the parts chosen below, AR loss: training an AR "
                       "source before translation)"})
    train_vision: bool = field(default=False, metadata={"help": "train the vision tower (not in stage 'projector')"})
    train_projector: bool = field(default=True, metadata={"help": "train the projector / merger (frozen under "
                                                                  "--lora-scope noisy: it feeds the clean stream)"})
    train_language: bool = field(default=True, metadata={"help": "train the language model"})
    ar_loss: str = field(default="per_token", metadata={"help": "stages 'projector' and 'autoregressive': "
                         "'per_token' (transformers' mean over tokens) or 'per_sample' (each sample weighs the same)"})
    learning_rate: float = field(default=1e-5, metadata={"help": "language model learning rate"})
    vision_learning_rate: float | None = field(default=None, metadata={"help": "default: learning_rate"})
    projector_learning_rate: float | None = field(default=None, metadata={"help": "default: learning_rate"})
    batch_size: int = field(default=4, metadata={"help": "per device"})
    gradient_accumulation: int = field(default=1, metadata={"help": "batches per optimizer step"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the data (fractions allowed)"})
    max_steps: int = field(default=-1, metadata={"help": "overrides epochs when > 0"})
    warmup_steps: int = field(default=0, metadata={"help": "linear learning-rate warm-up steps"})
    lr_schedule: str = field(default="linear", metadata={"help": "after warm-up: 'linear' or 'cosine' decay to 0, "
                                                                  "or 'constant'"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    save_steps: int = field(default=500, metadata={"help": "write a checkpoint every this many steps"})
    save_total_limit: int | None = field(default=None, metadata={"help": "keep only the newest N checkpoints"})
    logging_steps: int = field(default=10, metadata={"help": "log loss, noise level, tokens/s every N steps"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, data order and noise"})
    max_length: int | None = field(default=None, metadata={"help": "longer records are skipped and counted"})
    bf16: str = field(default="auto", metadata={"help": "bf16 autocast: 'auto' (on where the hardware has it: a "
                                                "GPU with bf16, a CPU with AMX or AVX-512 BF16), 'on' or 'off'"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in backward (less memory)"})
    group_by_length: bool = field(default=True, metadata={"help": "batch samples of similar length"})
    num_workers: int = field(default=0, metadata={"help": "data-loading worker processes"})
    lora_rank: int = field(default=0, metadata={"help": "LoRA adapters of this rank in the LM instead of full "
                                                         "finetuning (0: off); needs peft"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator"})
    lora_targets: str = field(default="q_proj,k_proj,v_proj,o_proj", metadata={"help": "comma-separated layer names"})
    lora_scope: str = field(default="all", metadata={"help": "which tokens the adapters act on: 'all', or 'noisy' "
                                                       "(draft-only: the clean stream and causal mode stay the base's "
                                                       "exactly; never merged)"})
    lora_mask_row: bool = field(default=True, metadata={"help": "with LoRA, train the mask token's embedding row too "
                                                                "(every other row stays fixed)"})
    ar_loss_weight: float = field(default=0.0, metadata={"help": "stage 'diffusion': weight of next-token CE on the "
                                  "clean stream (keeps the causal mode; needs causal context)"})
    distill_weight: float = field(default=0.0, metadata={"help": "stage 'diffusion': weight of KL(source || model) at "
                                  "masked positions (LoRA: the source is the base with its adapters off; full: a "
                                  "frozen copy)"})
    distill_temperature: float = field(default=1.0, metadata={"help": "temperature of the distillation term"})
    confidence_weight: float = field(default=0.0, metadata={"help": "stage 'diffusion': weight of the entropy of "
                                      "right predictions at masked positions (raises tokens per forward)"})
    noise_pattern: str | None = field(default=None, metadata={"help": "stage 'diffusion': which positions a block's "
                                      "noise level masks: 'independent' or 'suffix' (the known tokens a prefix, as "
                                      "in speculative drafting); default: the checkpoint's (DiffusionVLConfig)"})
    resume: bool = field(default=False, metadata={"help": "continue from the last complete checkpoint"})
    report_to: str = field(default="none", metadata={"help": "'none', 'tensorboard' or 'wandb'"})

    def __post_init__(self):
        check_options(self)

    @property
    def objective(self) -> "Objective":
        """The terms added to the block-diffusion loss (all zero by default: the loss is unchanged)."""
        from ..modeling.loss import Objective

        return Objective(self.ar_loss_weight, self.distill_weight, self.distill_temperature, self.confidence_weight)


STAGES = ("projector", "diffusion", "autoregressive")
SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}  # -> transformers' names

# options that must be above zero, and options that must not be below it (None means 'not set')
POSITIVE = ("batch_size", "gradient_accumulation", "save_steps", "logging_steps", "learning_rate", "lora_alpha",
            "distill_temperature",
            "vision_learning_rate", "projector_learning_rate", "max_length", "save_total_limit")
NON_NEGATIVE = ("warmup_steps", "weight_decay", "epochs", "num_workers", "lora_rank", "ar_loss_weight",
                "distill_weight", "confidence_weight")


def flag(name: str) -> str:
    """The command-line flag of a field."""
    return "--" + name.replace("_", "-")


def check_draft_only(config) -> None:
    """Draft-only adapters train the noisy stream alone (modeling/lora.py): what would not fit them."""
    if not config.lora_rank:
        raise DiffusionVLError("--lora-scope noisy scopes LoRA adapters, and --lora-rank is 0; set --lora-rank.")
    if config.ar_loss_weight:
        raise DiffusionVLError("--ar-loss-weight trains the clean stream, which draft-only adapters leave exactly the "
                               "base's, so it would train nothing; drop it, or use --lora-scope all.")
    if config.train_vision:
        raise DiffusionVLError("--train-vision would change the image features the clean stream reads, which "
                               "draft-only adapters leave exactly the base's; drop it, or use --lora-scope all.")
    if config.gradient_checkpointing:
        raise DiffusionVLError("--gradient-checkpointing recomputes the forward outside the step that says which "
                               "columns are noisy, so draft-only adapters would get wrong gradients; drop it, or use "
                               "--lora-scope all.")


def check_options(config) -> None:
    """A TrainingConfig's choices and numbers in range (NaN and inf are refused too)."""
    if config.stage not in STAGES:
        raise DiffusionVLError(f"--stage must be one of {', '.join(map(repr, STAGES))}, got {config.stage!r}.")
    if config.ar_loss not in ("per_token", "per_sample"):
        raise DiffusionVLError(f"--ar-loss must be 'per_token' or 'per_sample', got {config.ar_loss!r}.")
    if config.lr_schedule not in SCHEDULES:
        raise DiffusionVLError(f"--lr-schedule must be one of {', '.join(map(repr, SCHEDULES))}, got "
                               f"{config.lr_schedule!r}.")
    if config.bf16 not in ("auto", "on", "off"):
        raise DiffusionVLError(f"--bf16 must be 'auto', 'on' or 'off', got {config.bf16!r}.")
    if config.lora_rank and config.stage != "diffusion":
        raise DiffusionVLError(f"LoRA adapts the language model in stage 'diffusion' only, not in stage "
                               f"{config.stage!r}; drop --lora-rank or use --stage diffusion.")
    if config.noise_pattern not in (None, "independent", "suffix"):
        raise DiffusionVLError(f"--noise-pattern must be 'independent' or 'suffix', got {config.noise_pattern!r}.")
    if config.lora_scope not in ("all", "noisy"):
        raise DiffusionVLError(f"--lora-scope must be 'all' or 'noisy', got {config.lora_scope!r}.")
    if config.lora_scope == "noisy":
        check_draft_only(config)
    if config.lora_rank and config.lora_mask_row and config.weight_decay:
        raise DiffusionVLError("--weight-decay would shrink the embedding rows that --lora-mask-row keeps fixed; set "
                               "--weight-decay 0, or --no-lora-mask-row.")
    for name in POSITIVE + NON_NEGATIVE:
        value = getattr(config, name)
        if value is None:
            continue
        if not math.isfinite(value) or value < 0 or (value == 0 and name in POSITIVE):
            what = "a positive number" if name in POSITIVE else "zero or more"
            raise DiffusionVLError(f"{flag(name)} must be {what}, got {value}.")
    extra = [flag(name) for name in ("ar_loss_weight", "distill_weight", "confidence_weight") if getattr(config, name)]
    if extra and config.stage != "diffusion":
        raise DiffusionVLError(f"{', '.join(extra)} add to the block-diffusion loss of stage 'diffusion', not stage "
                               f"{config.stage!r}; drop them or use --stage diffusion.")
    if config.max_steps < -1:
        raise DiffusionVLError(f"--max-steps must be -1 (train for --epochs) or a step count, got {config.max_steps}.")


def _flag_type(hint):
    """int for `int`, float for `float | None`, and so on."""
    options = [a for a in typing.get_args(hint) if a is not type(None)]
    return options[0] if options else hint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`diffusionvl train` flags, one per TrainingConfig field."""
    hints = typing.get_type_hints(TrainingConfig)
    for spec in fields(TrainingConfig):
        name, kind, help_text = flag(spec.name), _flag_type(hints[spec.name]), spec.metadata.get("help")
        if kind is bool:
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=spec.default, help=help_text)
        elif spec.default is MISSING:
            parser.add_argument(name, type=kind, required=True, help=help_text)
        else:
            parser.add_argument(name, type=kind, default=spec.default, help=help_text)


def native_bf16() -> bool:
    """Whether this machine computes bf16 natively: a GPU with it, or, without a GPU, a CPU with AMX or AVX-512
    BF16. Elsewhere bf16 is emulated in software, many times slower than fp32."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    probes = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return any(probe is not None and probe() for probe in probes)


def training_arguments(config: TrainingConfig):
    """transformers' TrainingArguments of a run."""
    import torch
    from transformers import TrainingArguments

    bf16 = config.bf16 == "on" or (config.bf16 == "auto" and native_bf16())
    return TrainingArguments(
        output_dir=config.output_dir, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation, num_train_epochs=config.epochs,
        max_steps=config.max_steps, learning_rate=config.learning_rate, warmup_steps=config.warmup_steps,
        lr_scheduler_type=SCHEDULES[config.lr_schedule],
        weight_decay=config.weight_decay, save_strategy="steps", save_steps=config.save_steps,
        save_total_limit=config.save_total_limit, logging_steps=config.logging_steps, seed=config.seed,
        bf16=bf16, activation_checkpointing=config.gradient_checkpointing, dataloader_num_workers=config.num_workers,
        remove_unused_columns=False, report_to=config.report_to, use_cpu=not torch.cuda.is_available(),
    )
