"""Turn a transformers checkpoint (Qwen2.5-VL or any causal LM) into a DiffusionVL checkpoint ready to train.

Atomic: everything is written to a staging folder beside the destination and renamed into place at the end, so
a failure at any point leaves no half checkpoint. Everything that can be checked cheaply (source files,
destination) is checked before the model is loaded.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..checkpoints.folders import PROCESSOR_FILES, TOKENIZER_FILES, resolve_model
from ..errors import CheckpointLayoutError, DiffusionVLError
from ..model import VISION_LANGUAGE_TYPES, DiffusionVL
from ..modeling.processing import DiffusionVLProcessor


def check_source(src: Path) -> tuple[dict, bool]:
    """The source's config and whether it is a vision-language model; its tokenizer (and image processor) must
    be there before any weight is read."""
    if not (src / "config.json").is_file():
        raise CheckpointLayoutError(f"{src} holds no config.json; pass a transformers checkpoint directory.")
    try:
        config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointLayoutError(f"{src / 'config.json'} is not valid JSON ({error}).") from error
    if config.get("model_type", "").startswith("diffusionvl"):
        raise CheckpointLayoutError(f"{src} is already a DiffusionVL checkpoint; train or generate with it as it is.")
    if not any((src / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointLayoutError(f"{src} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); copy the "
                                    "tokenizer of the model beside its weights.")
    vision = config.get("model_type") in VISION_LANGUAGE_TYPES
    if vision and not any((src / name).is_file() for name in PROCESSOR_FILES):
        raise CheckpointLayoutError(f"{src} is a vision-language model without an image processor "
                                    "(preprocessor_config.json); copy it from the original model.")
    return config, vision


def check_destination(dst: Path) -> None:
    """A new or empty directory whose parent can be written to."""
    if dst.is_file():
        raise FileExistsError(f"{dst} is a file; choose a new directory so nothing is overwritten.")
    if dst.is_dir() and any(dst.iterdir()):
        raise FileExistsError(f"{dst} is not empty; choose a new directory so nothing is overwritten.")
    parent = dst.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise DiffusionVLError(f"cannot create {dst}: {parent} is a file, not a directory.")


def make_staging(dst: Path) -> Path:
    """The staging folder beside `dst`; creating it is the real test that the destination can be written."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{dst.name}.staging-", dir=dst.parent))
    except OSError as error:
        raise DiffusionVLError(f"cannot write {dst} ({error.strerror}); choose another destination.") from error


def _translate(src: Path, vision: bool, block_size, position_mode, mask_token_id, dtype, logit_shift: bool,
               context_attention: str):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    loader = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    try:
        model = loader.from_pretrained(src, dtype=dtype, attn_implementation="sdpa")
        tokenizer = AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError) as error:
        raise CheckpointLayoutError(f"{src} cannot be loaded as a transformers model ({error}).") from error
    translated = DiffusionVL.from_autoregressive(
        model, tokenizer, block_size=block_size, mask_token_id=mask_token_id, position_mode=position_mode,
        logit_shift=logit_shift, context_attention=context_attention,
    )
    return translated, tokenizer


def _processor(src: Path, config: dict, tokenizer, position_mode: str) -> DiffusionVLProcessor:
    from transformers import AutoImageProcessor

    name = tokenizer.convert_ids_to_tokens
    wrap = {}
    if position_mode == "mrope":
        wrap = dict(vision_start=name(config["vision_start_token_id"]), vision_end=name(config["vision_end_token_id"]))
    return DiffusionVLProcessor(AutoImageProcessor.from_pretrained(src), tokenizer,
                                image_token=name(config["image_token_id"]), **wrap)


def convert(src, dst, block_size: int = 8, position_mode: str = "1d", mask_token_id: int | None = None,
            dtype: torch.dtype | None = None, logit_shift: bool = False,
            context_attention: str = "block_causal") -> DiffusionVL:
    """Load `src`, translate it, and write model, tokenizer (with its mask token) and processor to `dst`.
    `logit_shift`: keep the source's "position i - 1 predicts token i"; `context_attention`: "causal" keeps the
    source's token-causal attention among clean tokens (see DiffusionVLConfig)."""
    src, dst = Path(resolve_model(src)), Path(dst)  # "minivl-ar" names the shipped AR model
    config, vision = check_source(src)
    check_destination(dst)
    staging = make_staging(dst)
    try:
        translated, tokenizer = _translate(src, vision, block_size, position_mode, mask_token_id, dtype, logit_shift,
                                           context_attention)
        translated.save_pretrained(staging)
        (_processor(src, config, tokenizer, position_mode) if vision else tokenizer).save_pretrained(staging)
        if dst.is_dir():
            dst.rmdir()  # empty, checked above
        os.replace(staging, dst)
    except OSError as error:
        raise DiffusionVLError(f"writing {dst} failed ({error}); nothing was left behind.") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return translated
