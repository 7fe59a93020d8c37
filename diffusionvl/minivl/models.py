"""The MiniVL models: transformers' own Qwen2.5-VL classes (ViT + merger + Qwen2 decoder) at a size a 2-core CPU
trains in minutes, with a byte-level BPE tokenizer of their own and the project's processor.

The tokenizer is trained on MiniVL text (so answers take few tokens) but, being byte-level, encodes any text a
user types. It carries Qwen's chat special tokens by name and a Qwen-style chat template; digits are single
tokens, so a number of any length is spelled digit by digit.
"""

import math
from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from ..modeling.processing import DiffusionVLProcessor
from ..modeling.tokens import IMAGE_TOKEN, MASK_TOKEN

PAD, START, END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
SPECIAL_TOKENS = [PAD, START, END, IMAGE_TOKEN, VISION_START, VISION_END, MASK_TOKEN]
# Qwen's turn format without a default system turn: MiniVL prompts are short, and every prompt token costs
# training compute (a system prompt would be a quarter of a MiniVL sequence). A system message is kept if given.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PATCH, MERGE = 14, 2  # Qwen2.5-VL's patch size and 2 x 2 merge: a 112 px image gives 8 x 8 patches, 16 tokens


@dataclass(frozen=True)
class MiniVLSize:
    """Shape of a MiniVL model. image_size: side of the square images (a multiple of PATCH * MERGE)."""

    vision_depth: int = 4
    vision_hidden: int = 96
    vision_heads: int = 4
    hidden: int = 192
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 512
    image_size: int = 112
    max_positions: int = 512


def build_tokenizer(texts, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts` (an iterable of strings), with the chat special tokens and template.
    Training is deterministic: the same texts give the same vocabulary."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    chat = ["system\n", "user\n", "assistant\n"]  # what the template adds around every turn
    backend.train_from_iterator([*chat, *texts], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, eos_token=END,
                                        additional_special_tokens=SPECIAL_TOKENS[1:])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_processor(tokenizer, image_size: int = 112) -> DiffusionVLProcessor:
    """Qwen's Pillow image processor fixed to `image_size` pixels square, and the tokenizer."""
    if image_size % (PATCH * MERGE):
        raise ValueError(f"image_size must be a multiple of {PATCH * MERGE}, got {image_size}.")
    pixels = image_size * image_size
    images = Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels, patch_size=PATCH, merge_size=MERGE)
    return DiffusionVLProcessor(images, tokenizer)


def image_size_of(processor, default: int = 112) -> int:
    """The side of the square images a MiniVL processor was built for (its fixed pixel count); `default` for a
    processor that takes any size."""
    size = getattr(getattr(processor, "image_processor", None), "size", None)
    pixels = getattr(size, "longest_edge", None) if size is not None else None
    if pixels is None or pixels != getattr(size, "shortest_edge", None) or math.isqrt(pixels) ** 2 != pixels:
        return default
    return math.isqrt(pixels)


def build_model(tokenizer, size: MiniVLSize = MiniVLSize(), seed: int = 0) -> Qwen2_5_VLForConditionalGeneration:
    """A randomly initialised Qwen2.5-VL of this size whose special ids come from the tokenizer, by name."""
    import torch

    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", IMAGE_TOKEN), ("vision_start_token_id", VISION_START), ("vision_end_token_id", VISION_END))}
    half = size.hidden // size.heads // 2  # M-RoPE splits half the head dimension over (time, height, width)
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=size.hidden, intermediate_size=size.intermediate,
            num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
            max_position_embeddings=size.max_positions, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
            pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section}),
        vision_config=dict(
            depth=size.vision_depth, hidden_size=size.vision_hidden, intermediate_size=2 * size.vision_hidden,
            num_heads=size.vision_heads, out_hidden_size=size.hidden, patch_size=PATCH, spatial_merge_size=MERGE,
            temporal_patch_size=2, window_size=size.image_size, fullatt_block_indexes=[size.vision_depth - 1]),
        tie_word_embeddings=True, **ids)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config)
