"""A decode's prompts: the checks on the prompt tensors before any forward, their embeddings and rope positions
(`Prompt`), and how rows are laid out by whole blocks (`prompt_layout`)."""

from dataclasses import dataclass

import torch

from ..errors import DiffusionVLError
from ..modeling.masks import positions_from_padding
from .config import DecodingConfig


@dataclass
class Prompt:
    """One row's prompt: ids (P,), embeddings (P, H) with any image features spliced in, rope positions (A, P)."""

    ids: torch.Tensor
    embeds: torch.Tensor
    rope: torch.Tensor

    @property
    def next_position(self) -> int:
        """Rope position of the first new token: P with 1-D positions, max + 1 after an image under M-RoPE."""
        return int(self.rope.max()) + 1


@dataclass
class Layout:
    ids: torch.Tensor  # (n, (C + 1) B): left padding, prompt, masks of the first generation block
    embeds: torch.Tensor  # (n, (C + 1) B, H); padding rows are zero and never attended
    rope: torch.Tensor  # (A, n, (C + 1) B)
    offsets: torch.Tensor  # (n,) left padding of each row
    shift: torch.Tensor  # (n,) rope position of a generated token = its column + shift
    full_blocks: int  # C


def prompt_layout(prompts: list[Prompt], block_size: int, mask_id: int, pad_id: int, full_blocks: int = 0) -> Layout:
    """Left-pad rows by whole blocks and open the first generation block; at least `full_blocks` prompt blocks
    (rows joining a running decode line their first block up with the others')."""
    full_blocks = max([full_blocks] + [len(p.ids) // block_size for p in prompts])
    width = (full_blocks + 1) * block_size
    first = prompts[0]
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=first.ids.device)
    embeds = first.embeds.new_zeros(len(prompts), width, first.embeds.shape[-1])
    rope = first.rope.new_zeros(first.rope.shape[0], len(prompts), width)
    offsets, shifts = [], []
    columns = torch.arange(width, device=ids.device)
    for row, prompt in enumerate(prompts):
        length = len(prompt.ids)
        offset = (full_blocks - length // block_size) * block_size
        shift = prompt.next_position - length - offset
        ids[row, offset : offset + length] = prompt.ids
        ids[row, offset + length :] = mask_id
        embeds[row, offset : offset + length] = prompt.embeds
        rope[:, row, offset + length :] = columns[offset + length :] + shift
        rope[:, row, offset : offset + length] = prompt.rope
        offsets.append(offset)
        shifts.append(shift)
    as_tensor = lambda values: torch.tensor(values, device=ids.device)  # noqa: E731
    return Layout(ids, embeds, rope, as_tensor(offsets), as_tensor(shifts), full_blocks)


def check_inputs(model, input_ids, attention_mask, config: DecodingConfig, streamer=None):
    """Every check on the prompt tensors, before any forward; returns (ids, valid), both (N, L).

    (L,) is one prompt and extra leading dimensions fold into the batch ((1, 1, L) is one prompt). Padded
    positions get the pad id, so whatever the caller padded with never reaches the embedding.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() == 0:
        raise DiffusionVLError(
            f"generate needs input_ids, a (N, L) or (L,) tensor of token ids, got {_describe(input_ids)}; "
            "e.g. tokenizer(text, return_tensors='pt').input_ids."
        )
    if input_ids.numel() == 0:
        raise DiffusionVLError(
            f"input_ids of shape {tuple(input_ids.shape)} hold no token: the prompt is empty; generation needs "
            "at least one token (e.g. a chat header)."
        )
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise DiffusionVLError(f"input_ids must hold integer token ids, got {input_ids.dtype}; convert with .long().")
    ids = input_ids.reshape(-1, input_ids.shape[-1]).long()  # (N, L)
    valid = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else _valid(attention_mask, input_ids, ids)
    tokens = model.special_tokens
    ids = ids.masked_fill(~valid, tokens.pad)
    empty = (~valid.any(1)).nonzero()
    if len(empty):
        raise DiffusionVLError(
            f"prompt {int(empty[0])} is empty; generation needs at least one token (e.g. a chat header)."
        )
    _check_ids(ids, valid, tokens)
    check_positions(model, valid.sum(1).tolist(), config)
    if streamer is not None and len(ids) != 1:
        raise DiffusionVLError(f"streaming takes one prompt at a time, got {len(ids)}; call generate once per prompt.")
    if streamer is not None and not config.use_cache:
        raise DiffusionVLError("streaming needs the cached decoder; drop use_cache=False.")
    return ids, valid


def _describe(value) -> str:
    if value is None:
        return "None"
    return f"the 0-D tensor {value!r}" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"


def _valid(attention_mask, input_ids: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The attention mask as (N, L) bool, folded like input_ids into `ids` (N, L); it needs one entry per token."""
    is_tensor = isinstance(attention_mask, torch.Tensor) and attention_mask.dim() > 0
    flat = attention_mask.reshape(-1, attention_mask.shape[-1]) if is_tensor else None
    if flat is None or flat.shape != ids.shape:
        got = f"shape {tuple(attention_mask.shape)}" if is_tensor else _describe(attention_mask)
        raise DiffusionVLError(
            f"attention_mask ({got}) does not match input_ids (shape {tuple(input_ids.shape)}); pass one entry per "
            "token (1 keeps it, 0 marks padding), as the tokenizer returns them, or no attention_mask for unpadded ids."
        )
    return flat.bool()


def _check_ids(ids: torch.Tensor, valid: torch.Tensor, tokens) -> None:
    """Prompt ids must be rows of the embedding, and never the mask id: that one marks the positions to fill."""
    outside = (ids < 0) | (ids >= tokens.vocab_size)
    if bool(outside.any()):
        row, column = outside.nonzero()[0].tolist()
        raise DiffusionVLError(
            f"prompt {row} holds token id {int(ids[row, column])} at position {column}, but the vocabulary has "
            f"{tokens.vocab_size} ids (0..{tokens.vocab_size - 1}); tokenize with this model's own tokenizer and mark "
            "padding with attention_mask 0."
        )
    reserved = (ids == tokens.mask) & valid
    if bool(reserved.any()):
        row, column = reserved.nonzero()[0].tolist()
        raise DiffusionVLError(
            f"prompt {row} holds the mask token id {tokens.mask} at position {column}; that id is reserved for the "
            "positions generate fills and must not appear in prompts. Remove it (or the '<|mask|>' text) from the "
            "prompt."
        )


def check_positions(model, lengths: list[int], config: DecodingConfig) -> None:
    """Fail before any forward if a prompt plus its answer would run past the model's positions."""
    limit = model.max_positions
    if limit is None:
        return
    size = model.block_size
    usable = limit // size * size  # positions in whole blocks: the last block must fit entirely
    for index, length in enumerate(lengths):
        needed = -(-(length + config.max_new_tokens) // size) * size
        if length >= usable:
            raise DiffusionVLError(
                f"prompt {index} has {length} tokens but the model has {limit} positions ({usable} in whole blocks of "
                f"{size}), which leaves no room for an answer; shorten the prompt to under {usable} tokens."
            )
        if needed > limit:
            room = usable - length
            raise DiffusionVLError(
                f"prompt {index} ({length} tokens) plus max_new_tokens={config.max_new_tokens} needs {needed} "
                f"positions (whole blocks of {size}) but the model has {limit}; lower max_new_tokens to at most {room}."
            )


def build_prompts(model, ids: torch.Tensor, valid: torch.Tensor, vision=None) -> list[Prompt]:
    """Embed the checked batch (N, L) once (images spliced in), compute its rope positions, cut it into rows."""
    embeds = model.backbone.embed(ids, vision)
    rope = model.backbone.positions(ids, positions_from_padding(valid), valid, vision)
    return [Prompt(ids[i][valid[i]], embeds[i][valid[i]], rope[:, i][:, valid[i]]) for i in range(len(valid))]
