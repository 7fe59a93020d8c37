"""The block decoding loop (SPEC §3): denoise each block against the KV cache, fused commit.

Layout of a batch: row i has P_i prompt tokens, c_i = P_i // B complete prompt blocks and r_i = P_i % B
prompt tokens in its first generation block. Rows are left-padded by whole blocks so that all rows share block
columns: the current block of every row occupies columns [column, column + B). Columns before it are the
committed cache (plus, with the fused commit, the last finished block or the prompt, which ride along with the
next denoising step and are cached by it).

A decode is continuous: `admit` adds rows at a block boundary (their prompt blocks end at `column`, the layout
widened on the left if a prompt needs more room), `step` denoises and commits one block for every row, and a row
leaves when it is finished. `generate` is one admit and steps until every row is done.
"""

import torch

from ..modeling.attention import shared_kv_heads
from ..modeling.masks import block_causal_mask
from .config import DecodingConfig
from .kv_cache import BlockCache
from .outputs import DecodingOutput, StopStrings
from .policies import StepContext, commit_step, settle_after_end, static_schedule, step_quota
from .prompts import Prompt, build_prompts, check_inputs, prompt_layout
from .reference import reference_decode
from .sampling import propose_masked


class BlockDecoder:
    """A running decode: the cache, the active rows and what they have produced so far.

    Rows are named by ids in admission order (0, 1, ...). `observer(rows, step, block, masked)`, when given, sees
    every denoising step: the ids of the rows in the block, the step's index within the block, the block's tokens
    (n, B) and which are still masks (n, B).
    """

    def __init__(self, model, config: DecodingConfig, tokenizer=None, generator=None, observer=None):
        self.model, self.config, self.tokenizer, self.generator = model, config, tokenizer, generator
        self.observer = observer
        self.tokens, self.backbone = model.special_tokens, model.backbone
        self.size = model.block_size
        self.steps = min(config.steps, self.size)
        self.policy = config.policy
        self.layers = self.backbone.decoder.config.num_hidden_layers
        device = model.get_input_embeddings().weight.device
        self.active = torch.zeros(0, dtype=torch.long, device=device)  # row id of each active row
        self.outputs: dict[int, list[int]] = {}
        self.block_steps: dict[int, list[int]] = {}
        self.limits: dict[int, tuple[int, StopStrings | None]] = {}  # row id: (max_new_tokens, stop strings)
        self.cancelled: set[int] = set()
        self.row_forwards = torch.zeros(0, dtype=torch.long, device=device)  # per row id
        self.nfe = self.prefill_forwards = 0
        self._mask: tuple[tuple, torch.Tensor] | None = None  # (shape key, mask): reused by every step of a block
        self._selected: tuple[tuple, BlockCache] | None = None  # (rows, their committed K/V) within a block
        self.cache = BlockCache(self.layers, 0)
        self.column = 0  # first column of the current block
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (embeds, rope) of columns not cached yet
        # The first block of a row may hold its prompt's last tokens: their embeddings (images included) and
        # positions come from the prompt, not from re-embedding ids. None once no row holds one.
        self.fixed = self.fixed_embeds = self.first_rope = None
        # logit_shift: the hidden state (n, H) of the column before the current block; it predicts the block's first
        # token and comes from the forward that read that column (prefill, commit, or the fused first step).
        self.shift_logits, self.carry = model.config.logit_shift, None

    # --- rows joining and leaving -------------------------------------------------------------------------------

    def admit(self, prompts: list[Prompt], max_new_tokens: list[int] | None = None,
              stop_strings: list[tuple[str, ...]] | None = None) -> list[int]:
        """Add rows before the next block; returns their ids. Per row: its length limit and stop strings (default:
        the config's). An empty decode lays the prompts out as one batch; a running one prefills them (their blocks
        before the shared pending columns) with a forward of their own, and they join the next block."""
        ids = list(range(len(self.row_forwards), len(self.row_forwards) + len(prompts)))
        limits = max_new_tokens or [self.config.max_new_tokens] * len(prompts)
        stops = stop_strings or [self.config.stop_strings] * len(prompts)
        for row, limit, strings in zip(ids, limits, stops):
            self.outputs[row], self.block_steps[row] = [], []
            self.limits[row] = (limit, StopStrings(strings, self.tokenizer) if strings else None)
        device = self.row_forwards.device
        self.row_forwards = torch.cat([self.row_forwards, torch.zeros(len(prompts), dtype=torch.long, device=device)])
        new = torch.tensor(ids, dtype=torch.long, device=device)
        full_blocks = self.column // self.size if len(self.active) else 0
        layout = prompt_layout(prompts, self.size, self.tokens.mask, self.tokens.pad, full_blocks)
        self.axes = layout.rope.shape[0]  # rope axes: 1, or 3 under M-RoPE
        if len(self.active):
            self._join(layout, new, max(limits))
        else:
            self._start(layout, new, max(limits))
        self._mask = None
        return ids

    def _start(self, layout, rows: torch.Tensor, longest: int) -> None:
        """Lay out a first batch. The prompt's complete blocks are read once. Fused: they ride along with the first
        denoising step, like a finished block (block-causal attention keeps them blind to the masks). Separate: a
        forward of their own."""
        start = layout.full_blocks * self.size
        self.active, self.offsets, self.shift, self.column = rows, layout.offsets, layout.shift, start
        self.cache = BlockCache(self.layers, start + (-(-longest // self.size) + 3) * self.size)
        self.pending, self.carry = None, None
        self._open_first_block(layout, start)
        if start and self.config.commit == "separate":
            self.carry = self._forward(layout.embeds[:, :start], layout.rope[:, :, :start])[:, -1]
            self.prefill_forwards += len(rows)
            self.cache.commit(start)
        elif start:
            self.pending = layout.embeds[:, :start], layout.rope[:, :, :start]

    def _open_first_block(self, layout, start: int) -> None:
        self.block = layout.ids[:, start:]
        self.fixed, self.fixed_embeds = self.block != self.tokens.mask, layout.embeds[:, start:]
        self.first_rope = layout.rope[:, :, start:]

    def _join(self, layout, rows: torch.Tensor, longest: int) -> None:
        """Rows of `layout` join the running ones: its first generation block lines up with the current block."""
        grow = layout.full_blocks * self.size - self.column  # >= 0: columns the old rows move right by
        old_block = self.block, *self._first_block_parts()
        committed = self.cache.get_seq_length() + grow  # columns cached after the move; the rest is pending
        joining, lo, carry = self._prefill(layout, committed)
        # room for the new rows' answers after the current block (as in _start), and for the old rows' as before
        room = self.column + grow + (-(-longest // self.size) + 3) * self.size
        capacity = max(self.cache.capacity + grow, room)
        self.cache = self.cache.rebuilt(grow, capacity, len(self.active), joining, lo, len(rows))
        self.offsets = torch.cat([self.offsets + grow, layout.offsets])
        self.shift = torch.cat([self.shift - grow, layout.shift])
        self.column += grow
        if self.pending is not None:
            self.pending = (torch.cat([self.pending[0], layout.embeds[:, committed : self.column]]),
                            torch.cat([self.pending[1], layout.rope[:, :, committed : self.column]], dim=1))
        if self.shift_logits:
            zeros = layout.embeds.new_zeros(len(self.active), layout.embeds.shape[-1])
            self.carry = torch.cat([zeros if self.carry is None else self.carry, carry])
        self._open_first_block(layout, self.column)
        self.block = torch.cat([old_block[0], self.block])
        self.fixed = torch.cat([old_block[1], self.fixed])
        self.fixed_embeds = torch.cat([old_block[2], self.fixed_embeds])
        self.first_rope = torch.cat([old_block[3], self.first_rope], dim=1)
        self.active = torch.cat([self.active, rows])
        self._selected = None

    def _first_block_parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(fixed (n, B), fixed embeds (n, B, H), rope (A, n, B)) of the active rows' current block."""
        if self.fixed is not None:
            return self.fixed, self.fixed_embeds, self.first_rope
        weight = self.model.get_input_embeddings().weight  # zeros of the embeddings' width and dtype; no lookup
        zeros = weight.new_zeros(*self.block.shape, weight.shape[1])
        return torch.zeros_like(self.block, dtype=torch.bool), zeros, self._block_rope()

    def _prefill(self, layout, committed: int) -> tuple[BlockCache | None, int, torch.Tensor]:
        """K/V of joining rows' columns [lo, committed) (lo: their first prompt column, in whole blocks), from a
        forward of their own; lo; and their carry (k, H), the state of column committed - 1 (zeros if not read)."""
        lo = int(layout.offsets.min()) // self.size * self.size
        carry = layout.embeds.new_zeros(len(layout.ids), layout.embeds.shape[-1])
        if lo >= committed:
            return None, lo, carry
        cache = BlockCache(self.layers, committed - lo)
        hidden = self._run(layout.embeds[:, lo:committed], layout.rope[:, :, lo:committed], cache, layout.offsets - lo)
        cache.commit(committed - lo)
        self.prefill_forwards += len(layout.ids)
        self.row_forwards[-len(layout.ids):] += 1
        return cache, lo, hidden[:, -1]

    def cancel(self, row: int) -> None:
        """`row` leaves at the end of the current block (a client went away); its tokens so far stay readable."""
        self.cancelled.add(row)

    def forget(self, row: int) -> None:
        """Drop a finished row's outputs (a long-running decode keeps only what is still wanted)."""
        for store in (self.outputs, self.block_steps, self.limits):
            store.pop(row, None)
        self.cancelled.discard(row)

    # --- one block --------------------------------------------------------------------------------------------

    def _block_rope(self) -> torch.Tensor:
        """Rope positions (A, n, B) of the current block's generated tokens: column + the row's shift."""
        columns = torch.arange(self.column, self.column + self.size, device=self.block.device)
        return (columns[None] + self.shift[:, None]).expand(self.axes, -1, -1)

    def _block_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (n, B, H) and rope positions (A, n, B) of the current block."""
        embeds = self.model.get_input_embeddings()(self.block)
        if self.fixed is not None:
            return torch.where(self.fixed[..., None], self.fixed_embeds, embeds), self.first_rope
        return embeds, self._block_rope()

    def _forward(self, embeds: torch.Tensor, rope: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Run `embeds` (n, Q, H) after the committed cache (their K/V are written, not kept: see kv_cache.py);
        returns their hidden states (n, Q, H). `rows` (k,): only those active rows take part (embeds (k, Q, H))."""
        subset = None if rows is None else tuple(rows.tolist())
        cache = self.cache if rows is None else self._rows_cache(rows, subset)
        offsets = self.offsets if rows is None else self.offsets[rows]
        # the mask is rebuilt when rows join (admit resets it); rows that leave change the count, a subset is named
        key = (len(self.active) if subset is None else subset, embeds.shape[1], cache.get_seq_length())
        hidden = self._run(embeds, rope, cache, offsets, key)
        self.row_forwards[self.active if rows is None else self.active[rows]] += 1
        return hidden

    def _run(self, embeds, rope, cache: BlockCache, offsets: torch.Tensor, key: tuple | None = None) -> torch.Tensor:
        """One forward of `embeds` (n, Q, H) at rope positions (A, n, Q) after `cache`; rows start at `offsets`."""
        past, q = cache.get_seq_length(), embeds.shape[1]
        if key is None or self._mask is None or self._mask[0] != key:
            columns = torch.arange(past + q, device=embeds.device)[None]
            index = (columns - offsets[:, None]).clamp(min=0)  # (n, K) sequence index: it defines the blocks
            valid = columns >= offsets[:, None]
            mask = block_causal_mask(index[:, -q:], valid[:, -q:], index, valid, self.size, self.model.dtype)
            if key is None:
                return self._decode(embeds, mask, rope, cache)
            self._mask = (key, mask)
        return self._decode(embeds, self._mask[1], rope, cache)

    def _decode(self, embeds, mask, rope, cache) -> torch.Tensor:
        self.nfe += 1
        return self.backbone.decode(embeds, mask, rope, cache, use_cache=True)

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
            if self.observer is not None:
                self.observer(self.active.tolist(), step, self.block, masked)
        for row, steps in zip(self.active.tolist(), taken.tolist()):
            self.block_steps[row].append(steps)

    def commit_block(self) -> list[tuple[int, list[int], bool]]:
        """Record the finished block, drop finished rows, and store the block's K/V for the rows that go on:
        fused, during the next block's first forward; separate, with a forward of its own now. Returns, per row of
        the block, (row id, its new tokens, whether it is finished)."""
        keep, updates = [], []
        starts = self.fixed.sum(1).tolist() if self.fixed is not None else [0] * len(self.active)
        for index, (row, tokens, start) in enumerate(zip(self.active.tolist(), self.block.tolist(), starts)):
            before = len(self.outputs[row])
            finished = self._extend(row, tokens[start:]) or row in self.cancelled
            updates.append((row, self.outputs[row][before:], finished))
            if not finished:
                keep.append(index)
        finished_inputs = self._block_inputs()
        self.fixed = self.fixed_embeds = self.first_rope = None
        if len(keep) < len(self.active):
            index = torch.tensor(keep, dtype=torch.long, device=self.block.device)
            self.cache.batch_select_indices(index)
            self.offsets, self.shift, self.active = self.offsets[index], self.shift[index], self.active[index]
            self.block = self.block[index]
            finished_inputs = finished_inputs[0][index], finished_inputs[1][:, index]
            if self.carry is not None:
                self.carry = self.carry[index]
        if keep and self.config.commit == "separate":
            self.carry = self._forward(*finished_inputs)[:, -1]
            self.cache.commit(self.size)
        elif keep:
            self.pending = finished_inputs
        self.column += self.size
        self.block = torch.full_like(self.block, self.tokens.mask)
        if keep and len(keep) < len(updates):
            self._drop_padding()
        return updates

    def _drop_padding(self) -> None:
        """Columns left of every remaining row's first one (whole blocks, committed) are read by no one: cut them,
        so a long-running decode does not attend over the padding of rows long gone."""
        drop = min(int(self.offsets.min()), self.cache.get_seq_length()) // self.size * self.size
        if drop:
            self.cache = self.cache.rebuilt(-drop, self.cache.capacity - drop, len(self.active))
            self.offsets, self.shift, self.column = self.offsets - drop, self.shift + drop, self.column - drop
            self._mask = None

    def step(self) -> list[tuple[int, list[int], bool]]:
        """Denoise and commit one block for every active row; see `commit_block` for what it returns."""
        self.denoise_block()
        return self.commit_block()

    def _extend(self, row: int, new: list[int]) -> bool:
        """Append a block's new tokens to a row; True when the row is finished (end-of-turn, length, stop)."""
        out, (limit, stops) = self.outputs[row], self.limits[row]
        before = len(out)
        out.extend(new)
        finished = False
        if self.tokens.eot in new:
            del out[out.index(self.tokens.eot, len(out) - len(new)) + 1 :]
            finished = True
        if len(out) >= limit:
            del out[limit:]
            finished = True
        if stops is not None and len(out) > before and stops.cut(out, len(out) - before):
            finished = True
        return finished

    def run(self, streamer=None) -> DecodingOutput:
        """Step until every row is finished; `streamer` gets row 0's tokens block by block."""
        while len(self.active):
            for row, new, _ in self.step():
                if streamer is not None and row == 0 and new:
                    streamer.put(torch.tensor(new))
        if streamer is not None:
            streamer.end()
        return self.result()

    def result(self) -> DecodingOutput:
        rows = [self.outputs[row] for row in sorted(self.outputs)]
        steps = [self.block_steps[row] for row in sorted(self.block_steps)]
        return DecodingOutput.from_rows(rows, self.nfe, self.tokens.pad, steps, int(self.row_forwards.sum()),
                                        self.prefill_forwards)


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
                decoder = BlockDecoder(model, config, tokenizer, generator)
                decoder.admit(prompts)
                return decoder.run(streamer)
    finally:
        if was_training:
            model.train()
