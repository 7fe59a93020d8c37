"""The block decoding loop (SPEC §3): denoise each block against the KV cache, fused commit.

Layout of a batch: row i has P_i prompt tokens, c_i = P_i // B complete prompt blocks and r_i = P_i % B
prompt tokens in its first generation block. Rows are left-padded by (C - c_i) whole blocks, C = max c_i, so
every row's blocks start at its own position 0 and all rows share block columns. Columns [0, CB) are
read once, during the first denoising step (or by a prefill forward of their own with commit="separate");
generation block g occupies columns [(C+g)B, (C+g+1)B).
"""

from dataclasses import dataclass

import torch

from .attention import shared_kv_heads
from .errors import DiffusionVLError
from .generation_config import DecodingConfig
from .kv_cache import BlockCache
from .masks import block_causal_mask, positions_from_padding
from .outputs import DecodingOutput, StopStrings
from .policies import StepContext, commit_step, settle_after_end, static_schedule, step_quota
from .reference import reference_decode
from .sampling import propose_masked


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


def prompt_layout(prompts: list[Prompt], block_size: int, mask_id: int, pad_id: int) -> Layout:
    """Left-pad rows by whole blocks and open the first generation block."""
    full_blocks = max(len(p.ids) // block_size for p in prompts)
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


class BlockDecoder:
    """One generate call: the cache, the active rows and what they have produced so far."""

    def __init__(self, model, prompts: list[Prompt], config: DecodingConfig, tokenizer=None, generator=None):
        self.model, self.config, self.tokenizer, self.generator = model, config, tokenizer, generator
        self.tokens, self.backbone = model.special_tokens, model.backbone
        self.size = model.block_size
        self.steps = min(config.steps, self.size)
        self.policy = config.policy
        self.stops = StopStrings(config.stop_strings, tokenizer) if config.stop_strings else None
        layout = prompt_layout(prompts, self.size, self.tokens.mask, self.tokens.pad)
        self.offsets, self.shift = layout.offsets, layout.shift
        self.prompt_lengths = [len(p.ids) for p in prompts]
        self.active = torch.arange(len(prompts), device=layout.ids.device)  # original row of each active row
        self.outputs: list[list[int]] = [[] for _ in prompts]
        self.block_steps: list[list[int]] = [[] for _ in prompts]
        self.row_forwards = torch.zeros(len(prompts), dtype=torch.long, device=layout.ids.device)
        self.nfe = 0
        self._mask: tuple[tuple, torch.Tensor] | None = None  # (shape key, mask): reused by every step of a block
        self._selected: tuple[tuple, BlockCache] | None = None  # (rows, their committed K/V) within a block
        capacity = (layout.full_blocks + -(-config.max_new_tokens // self.size) + 3) * self.size
        self.cache = BlockCache(self.backbone.decoder.config.num_hidden_layers, capacity)
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (embeds, rope) of a block not cached yet
        # logit_shift: the hidden state (n, H) of the column before the current block; it predicts the block's first
        # token and comes from the forward that read that column (prefill, commit, or the fused first step).
        self.shift_logits, self.carry = model.config.logit_shift, None
        start = layout.full_blocks * self.size
        self.column = start  # first column of the current block
        self.block = layout.ids[:, start:]
        # The first block may hold the prompt's last tokens: their embeddings (images included) and positions
        # come from the prompt, not from re-embedding ids.
        self.fixed, self.fixed_embeds, self.first_rope = self.block != self.tokens.mask, layout.embeds[:, start:], layout.rope[:, :, start:]
        # The prompt's complete blocks are read once. Fused: they ride along with the first denoising step, like a
        # finished block (block-causal attention keeps them blind to the masks). Separate: a forward of their own.
        self.prefill_forwards = len(prompts) if start and config.commit == "separate" else 0
        if start and config.commit == "separate":
            self.carry = self._forward(layout.embeds[:, :start], layout.rope[:, :, :start])[:, -1]
            self.cache.commit(start)
        elif start:
            self.pending = layout.embeds[:, :start], layout.rope[:, :, :start]

    def _block_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (n, B, H) and rope positions (A, n, B) of the current block."""
        embeds = self.model.get_input_embeddings()(self.block)
        if self.fixed is not None:
            return torch.where(self.fixed[..., None], self.fixed_embeds, embeds), self.first_rope
        columns = torch.arange(self.column, self.column + self.size, device=self.block.device)
        rope = (columns[None] + self.shift[:, None]).expand(self.first_rope.shape[0], -1, -1)
        return embeds, rope

    def _forward(self, embeds: torch.Tensor, rope: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Run `embeds` (n, Q, H) after the committed cache (their K/V are written, not kept: see kv_cache.py);
        returns their hidden states (n, Q, H). `rows` (k,): only those active rows take part (embeds (k, Q, H))."""
        subset = None if rows is None else tuple(rows.tolist())
        cache = self.cache if rows is None else self._rows_cache(rows, subset)
        offsets = self.offsets if rows is None else self.offsets[rows]
        past, q = cache.get_seq_length(), embeds.shape[1]
        columns = torch.arange(past + q, device=embeds.device)[None]
        index = (columns - offsets[:, None]).clamp(min=0)  # (n, K) sequence index: it defines the blocks
        # rows only ever leave, so a row count names the full layout; a subset is named by its rows
        key = (len(self.active) if subset is None else subset, q, past + q)
        if self._mask is None or self._mask[0] != key:
            valid = columns >= offsets[:, None]
            mask = block_causal_mask(index[:, -q:], valid[:, -q:], index, valid, self.size, self.model.dtype)
            self._mask = (key, mask)
        hidden = self.backbone.decode(embeds, self._mask[1], rope, cache, use_cache=True)
        self.nfe += 1
        self.row_forwards[self.active if rows is None else self.active[rows]] += 1
        return hidden

    def _rows_cache(self, rows: torch.Tensor, subset: tuple[int, ...]) -> BlockCache:
        """The committed K/V of `rows` (named by `subset`, their indices) alone, copied once per set within a block."""
        if self._selected is None or self._selected[0] != subset:
            self._selected = (subset, self.cache.select_rows(rows, self.size))
        return self._selected[1]

    def _block_states(self, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The states (n, B, H) that predict the current block's tokens, from a forward's hidden states (n, Q, H),
        Q >= B: the last B states, or with logit_shift the B states before each position (the first from `carry`).
        `rows`: the forward ran on those active rows only (a follow-up step, Q = B)."""
        if not self.shift_logits:
            return hidden[:, -self.size :]
        if hidden.shape[1] > self.size:  # a finished block or the prompt rode along: its last column precedes ours
            self.carry = hidden[:, -self.size - 1]
        elif self.carry is None:  # no prefill: the block starts at position 0, which predicts itself (a prompt token)
            self.carry = hidden[:, -self.size]
        carry = self.carry if rows is None else self.carry[rows]
        return torch.cat([carry[:, None], hidden[:, -self.size : -1]], dim=1)

    def denoise_block(self) -> None:
        """Fill every mask of the current block. Its K/V are never committed here. A row whose block is complete
        leaves the block's remaining steps: they run on the rows that still hold masks."""
        config = self.config
        masked = answer = self.block == self.tokens.mask
        schedule = static_schedule(self.size, self.steps)  # B over S steps, whatever the first block holds
        taken = torch.zeros(len(self.active), dtype=torch.long, device=self.block.device)
        self._selected = None  # the committed cache changed since the last block
        for step in range(self.steps):
            live = masked.any(1)
            if not bool(live.any()):
                break
            # every row holds a mask at the first step, which is the only one a pending block rides along with
            rows = None if bool(live.all()) else live.nonzero()[:, 0]
            part = slice(None) if rows is None else rows
            embeds, rope = self._block_inputs()
            embeds, rope = embeds[part], rope[:, part]
            committed = 0 if self.pending is None else self.pending[0].shape[1]
            if committed:  # fused commit: the finished block (or the prompt) rides along and stays cached
                embeds, rope = torch.cat([self.pending[0], embeds], dim=1), torch.cat([self.pending[1], rope], dim=2)
            states = self._block_states(self._forward(embeds, rope, rows), rows)
            self.cache.commit(committed)  # keep the ridden-along K/V; the current block's are not kept
            self.pending = None
            block, still = self.block[part], masked[part]
            token, confidence = propose_masked(  # logits only where a token is still to be chosen
                self.backbone.head(states[still]), still, self.tokens.never_generated, config.temperature,
                config.top_k, config.top_p, self.generator)
            taken += live
            context = StepContext(step, self.steps, step_quota(schedule, step, still))
            block, still = commit_step(self.policy, token, confidence, block, still, context)
            block, still = settle_after_end(block, still, answer[part], self.tokens.eot)
            self.block, masked = self.block.index_put((live,), block), masked.index_put((live,), still)
        for row, steps in zip(self.active.tolist(), taken.tolist()):
            self.block_steps[row].append(steps)

    def commit_block(self) -> None:
        """Record the finished block, drop finished rows, and store the block's K/V for the rows that go on:
        fused, during the next block's first forward; separate, with a forward of its own now."""
        keep = []
        for index, (row, tokens) in enumerate(zip(self.active.tolist(), self.block.tolist())):
            start = self.prompt_lengths[row] % self.size if self.fixed is not None else 0
            if not self._extend(row, tokens[start:]):
                keep.append(index)
        finished = self._block_inputs()
        self.fixed = None
        if len(keep) < len(self.active):
            index = torch.tensor(keep, dtype=torch.long, device=self.block.device)
            self.cache.batch_select_indices(index)
            self.offsets, self.shift, self.active = self.offsets[index], self.shift[index], self.active[index]
            self.block, finished = self.block[index], (finished[0][index], finished[1][:, index])
        if keep and self.config.commit == "separate":
            self.carry = self._forward(*finished)[:, -1]
            self.cache.commit(self.size)
        elif keep:
            self.pending = finished
        self.column += self.size
        self.block = torch.full_like(self.block, self.tokens.mask)

    def _extend(self, row: int, new: list[int]) -> bool:
        """Append a block's new tokens to a row; True when the row is finished (end-of-turn, length, stop)."""
        out = self.outputs[row]
        before = len(out)
        out.extend(new)
        finished = False
        if self.tokens.eot in new:
            del out[out.index(self.tokens.eot, len(out) - len(new)) + 1 :]
            finished = True
        if len(out) >= self.config.max_new_tokens:
            del out[self.config.max_new_tokens :]
            finished = True
        if self.stops is not None and len(out) > before and self.stops.cut(out, len(out) - before):
            finished = True
        return finished

    def run(self, streamer=None) -> DecodingOutput:
        while len(self.active):
            self.denoise_block()
            streamed = len(self.outputs[0]) if streamer is not None else 0
            self.commit_block()
            if streamer is not None and len(self.outputs[0]) > streamed:
                streamer.put(torch.tensor(self.outputs[0][streamed:]))
        if streamer is not None:
            streamer.end()
        return self.result()

    def result(self) -> DecodingOutput:
        return DecodingOutput.from_rows(self.outputs, self.nfe, self.tokens.pad, self.block_steps,
                                        int(self.row_forwards.sum()), self.prefill_forwards)


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


def generate(model, input_ids, attention_mask, config: DecodingConfig, streamer=None, tokenizer=None, generator=None,
             vision=None):
    """Decode a batch of prompts. `config.use_cache=False` runs the reference decoder instead."""
    ids, valid = check_inputs(model, input_ids, attention_mask, config, streamer)
    was_training = model.training
    if was_training:  # .eval() walks every module (milliseconds on a small model): only when it changes something
        model.eval()
    try:
        with torch.no_grad():
            prompts = build_prompts(model, ids, valid, vision)  # also for the reference: same image errors, first
            if not config.use_cache:
                return reference_decode(model, ids, valid, vision, config, tokenizer, generator)
            if streamer is not None:
                streamer.put(prompts[0].ids.cpu())  # transformers' streamers expect the prompt first (skip_prompt)
            with shared_kv_heads(model.backbone.decoder.config):
                return BlockDecoder(model, prompts, config, tokenizer, generator).run(streamer)
    finally:
        if was_training:
            model.train()
