"""The block decoding loop (SPEC §3): prefill, denoise each block against the KV cache, fused commit.

Layout of a batch: row i has P_i prompt tokens, c_i = P_i // B complete prompt blocks and r_i = P_i % B
prompt tokens in its first generation block. Rows are left-padded by (C - c_i) whole blocks, C = max c_i, so
every row's blocks start at its own position 0 and all rows share block columns. Columns [0, CB) are
prefilled once; generation block g occupies columns [(C+g)B, (C+g+1)B).
"""

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .generation_config import DecodingConfig
from .masks import block_causal_mask
from .policies import StepContext, commit_step, static_schedule
from .sampling import propose


@dataclass
class DecodingOutput:
    """sequences (N, T): new tokens only, pad after the end. nfe: model forwards. tokens_per_forward: new
    tokens per forward a row took part in. block_steps: per row, the denoising steps of each of its blocks."""

    sequences: torch.Tensor
    nfe: int
    tokens_per_forward: float
    block_steps: list[list[int]]

    @classmethod
    def from_rows(cls, rows: list[list[int]], nfe: int, pad: int, block_steps=None, row_forwards=None):
        """Pack per-row outputs, pad after each row's end. `row_forwards`: forwards summed over rows (default nfe)."""
        sequences = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
        for index, row in enumerate(rows):
            sequences[index, : len(row)] = torch.tensor(row, dtype=torch.long)
        per_forward = sum(len(r) for r in rows) / max(row_forwards if row_forwards is not None else nfe, 1)
        return cls(sequences, nfe, per_forward, block_steps if block_steps is not None else [[] for _ in rows])


def prompt_layout(prompts: list[torch.Tensor], block_size: int, mask_id: int, pad_id: int):
    """Left-pad rows by whole blocks and open the first generation block. Returns (ids, offsets, C)."""
    full_blocks = max(len(p) // block_size for p in prompts)
    width = (full_blocks + 1) * block_size
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=prompts[0].device)
    offsets = []
    for row, prompt in enumerate(prompts):
        offset = (full_blocks - len(prompt) // block_size) * block_size
        ids[row, offset : offset + len(prompt)] = prompt
        ids[row, offset + len(prompt) :] = mask_id
        offsets.append(offset)
    return ids, torch.tensor(offsets, device=ids.device), full_blocks


class BlockDecoder:
    """One generate call: the cache, the active rows and what they have produced so far."""

    def __init__(self, model, prompts: list[torch.Tensor], config: DecodingConfig, tokenizer=None, generator=None):
        self.model, self.config, self.tokenizer, self.generator = model, config, tokenizer, generator
        self.tokens = model.special_tokens
        self.size = model.block_size
        self.steps = min(config.steps, self.size)
        self.policy = config.policy
        ids, self.offsets, full_blocks = prompt_layout(prompts, self.size, self.tokens.mask, self.tokens.pad)
        self.prompt_lengths = [len(p) for p in prompts]
        self.active = torch.arange(len(prompts), device=ids.device)  # original row of each active row
        self.outputs: list[list[int]] = [[] for _ in prompts]
        self.block_steps: list[list[int]] = [[] for _ in prompts]
        self.row_forwards = torch.zeros(len(prompts), dtype=torch.long, device=ids.device)
        self.nfe = 0
        self._mask: tuple[tuple, torch.Tensor] | None = None  # (shape key, mask): reused by every step of a block
        self.cache = DynamicCache(config=model.model.config)
        self.pending: torch.Tensor | None = None  # finished block whose K/V are not cached yet
        self.first_block = True
        self.block = ids[:, full_blocks * self.size :]
        if full_blocks:
            self._forward(ids[:, : full_blocks * self.size], head=False)

    def _forward(self, ids: torch.Tensor, head: bool = True) -> torch.Tensor | None:
        """Run `ids` (n, Q) after the cache. Appends their K/V to the cache; returns logits of the last block."""
        past, q = self.cache.get_seq_length(), ids.shape[1]
        columns = torch.arange(past + q, device=ids.device)[None]
        positions = (columns - self.offsets[:, None]).clamp(min=0)  # (n, K)
        key = (len(self.active), q, past + q)  # rows only ever leave, so this names one layout
        if self._mask is None or self._mask[0] != key:
            valid = columns >= self.offsets[:, None]
            mask = block_causal_mask(positions[:, -q:], valid[:, -q:], positions, valid, self.size, self.model.dtype)
            self._mask = (key, mask)
        mask = self._mask[1]
        decoder = self.model.model.base_model
        hidden = decoder(
            input_ids=ids, attention_mask=mask, position_ids=positions[:, -q:], past_key_values=self.cache, use_cache=True
        ).last_hidden_state
        self.nfe += 1
        self.row_forwards[self.active] += 1
        return self.model.get_output_embeddings()(hidden[:, -self.size :]) if head else None

    def denoise_block(self) -> None:
        """Fill every mask of the current block. Its K/V never stay in the cache here."""
        config = self.config
        masked = self.block == self.tokens.mask
        schedule = static_schedule(masked.sum(1), self.steps)  # (n, S)
        taken = torch.zeros(len(self.active), dtype=torch.long, device=self.block.device)
        for step in range(self.steps):
            if not bool(masked.any()):
                break
            ids = self.block if self.pending is None else torch.cat([self.pending, self.block], dim=1)
            logits = self._forward(ids)
            self.cache.crop(-self.size)  # keep the pending block (now committed), drop the current one
            self.pending = None
            token, confidence = propose(
                logits, self.tokens.never_generated, config.temperature, config.top_k, config.top_p, self.generator
            )
            taken += masked.any(1)
            context = StepContext(step, self.steps, schedule[:, step])
            self.block, masked = commit_step(self.policy, token, confidence, self.block, masked, context)
        for row, steps in zip(self.active.tolist(), taken.tolist()):
            self.block_steps[row].append(steps)

    def commit_block(self) -> None:
        """Record the finished block, drop finished rows, and store the block's K/V for the rows that go on:
        fused, during the next block's first forward; separate, with a forward of its own now."""
        keep = []
        for index, (row, tokens) in enumerate(zip(self.active.tolist(), self.block.tolist())):
            start = self.prompt_lengths[row] % self.size if self.first_block else 0
            if not self._extend(row, tokens[start:]):
                keep.append(index)
        self.first_block = False
        if len(keep) < len(self.active):
            index = torch.tensor(keep, dtype=torch.long, device=self.block.device)
            self.cache.batch_select_indices(index)
            self.offsets, self.active, self.block = self.offsets[index], self.active[index], self.block[index]
        if keep and self.config.commit == "separate":
            self._forward(self.block, head=False)
        elif keep:
            self.pending = self.block
        self.block = torch.full_like(self.block, self.tokens.mask)

    def _extend(self, row: int, new: list[int]) -> bool:
        """Append a block's new tokens to a row; True when the row is finished (end-of-turn, length, stop)."""
        out = self.outputs[row]
        out.extend(new)
        finished = False
        if self.tokens.eot in new:
            del out[out.index(self.tokens.eot, len(out) - len(new)) + 1 :]
            finished = True
        if len(out) >= self.config.max_new_tokens:
            del out[self.config.max_new_tokens :]
            finished = True
        if self.config.stop_strings and _cut_at_stop_string(out, self.config.stop_strings, self.tokenizer):
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
                                        int(self.row_forwards.sum()))


def _cut_at_stop_string(out: list[int], stop_strings, tokenizer) -> bool:
    """Truncate `out` after the shortest prefix whose text holds a stop string; True if one was found."""
    if tokenizer is None:
        raise ValueError("stop_strings need the tokenizer: pass generate(..., tokenizer=tokenizer).")
    if not any(s in tokenizer.decode(out) for s in stop_strings):
        return False
    for end in range(1, len(out) + 1):
        if any(s in tokenizer.decode(out[:end]) for s in stop_strings):
            del out[end:]
            return True
    return False


def split_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
    """(N, L) ids, left- or right-padded, -> the N prompts without padding."""
    if input_ids is None:
        raise ValueError("generate needs input_ids (the tokenised prompt).")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    prompts = [row[keep.bool()] for row, keep in zip(input_ids, attention_mask.reshape(input_ids.shape))]
    for index, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {index} is empty; generation needs at least one token (e.g. a chat header).")
    return prompts


def check_positions(model, prompts: list[torch.Tensor], config: DecodingConfig) -> None:
    """Fail before any forward if a prompt plus its answer would run past the model's positions."""
    limit = getattr(model.config.base_config, "max_position_embeddings", None)
    if limit is None:
        return
    size = model.block_size
    for index, prompt in enumerate(prompts):
        length = len(prompt)
        needed = -(-(length + config.max_new_tokens) // size) * size  # whole blocks
        if length >= limit:
            raise ValueError(f"prompt {index} has {length} tokens but the model has only {limit} positions; shorten it.")
        if needed > limit:
            room = limit // size * size - length
            raise ValueError(
                f"prompt {index} ({length} tokens) plus max_new_tokens={config.max_new_tokens} needs {needed} positions "
                f"(whole blocks of {size}) but the model has {limit}; lower max_new_tokens to at most {room}."
            )


def generate(model, input_ids, attention_mask, config: DecodingConfig, streamer=None, tokenizer=None, generator=None):
    """Decode a batch of prompts. `config.use_cache=False` runs the reference decoder instead."""
    prompts = split_prompts(input_ids, attention_mask)
    check_positions(model, prompts, config)
    if streamer is not None and len(prompts) != 1:
        raise ValueError(f"streaming takes one prompt at a time, got {len(prompts)}.")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if not config.use_cache:
                if streamer is not None:
                    raise ValueError("streaming needs the cached decoder (use_cache=True).")
                from .reference import reference_decode

                return reference_decode(model, prompts, config, tokenizer, generator)
            if streamer is not None:
                streamer.put(prompts[0].cpu())  # transformers' streamers expect the prompt first (skip_prompt)
            return BlockDecoder(model, prompts, config, tokenizer, generator).run(streamer)
    finally:
        model.train(was_training)
