"""Turn a transformers checkpoint (Qwen2.5-VL or any causal LM) into a DiffusionVL checkpoint ready to train."""

from pathlib import Path

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

from .model import VISION_LANGUAGE_TYPES, DiffusionVL
from .processing import DiffusionVLProcessor


def convert(src, dst, block_size: int = 8, position_mode: str = "1d", mask_token_id: int | None = None,
            dtype: torch.dtype | None = None) -> DiffusionVL:
    """Load `src`, translate it, and write model, tokenizer (with its mask token) and processor to `dst`."""
    src, dst = Path(src), Path(dst)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} holds no config.json; pass a transformers checkpoint directory.")
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(f"{dst} is not empty; choose a new directory so nothing is overwritten.")
    config = AutoConfig.from_pretrained(src)
    vision = config.model_type in VISION_LANGUAGE_TYPES
    loader = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    model = loader.from_pretrained(src, dtype=dtype, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(src)
    translated = DiffusionVL.from_autoregressive(
        model, tokenizer, block_size=block_size, mask_token_id=mask_token_id, position_mode=position_mode
    )
    translated.save_pretrained(dst)
    if vision:
        name = tokenizer.convert_ids_to_tokens
        wrap = {}
        if position_mode == "mrope":
            wrap = dict(vision_start=name(config.vision_start_token_id), vision_end=name(config.vision_end_token_id))
        processor = DiffusionVLProcessor(AutoImageProcessor.from_pretrained(src), tokenizer,
                                         image_token=name(config.image_token_id), **wrap)
        processor.save_pretrained(dst)
    else:
        tokenizer.save_pretrained(dst)
    return translated
