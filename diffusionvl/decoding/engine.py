"""The block decoding loop (SPEC §3): denoise each block against the KV cache, fused commit.

Layout of a batch: row i has P_i prompt tokens, c_i = P_i // B complete prompt blocks and r_i = P_i % B
prompt tokens in its first generation block. Rows are left-padded by whole blocks so that all rows share block
columns: the current block of every row occupies columns [column, column + B). Columns before it are the
committed cache (plus, with the fused commit, the last finished block or the prompt, which ride along with the
next denoising step and are cached by it).

A decode is continuous: `admit` adds rows at a block boundary (their prompt blocks end at `column`, the layout
widened on the left if a prompt needs more room), `step` denoises and commits one block for every row, and a row
leaves, its record handed back, when it is finished. `generate` is one admit and steps until every row is done.
Each row's state is one record (rows.Row); the active rows' tensors are one batch (rows.Batch).
"""

import torch

from ..errors import DiffusionVLError
from ..modeling.masks import block_causal_mask
from .config import DecodingConfig
from .kv_cache import BlockCache
from .outputs import DecodingOutput, StopStrings
from .policies import StepContext, commit_step, settle_after_end, static_schedule, step_quota
from .prompts import Prompt, build_prompts, check_inputs, prompt_layout
from .reference import reference_decode
from .rows import Batch, Row
from .sampling import generator_on, propose_masked
from .speculative import check_self_verifier, check_verifier, speculate_block


class BlockDecoder:
    """A running decode: the cache and the active rows.

    Rows are numbered in admission order (0, 1, ...). `observer(rows, step, block, masked, verdict=None)`, when
    given, sees every denoising step: the records of the rows in the block, the step's index within the block, the
    block's tokens (n, B) and which are still masks (n, B); a speculative step adds each position's verdict (n, B)
    (speculative.VERDICTS: a draft not checked yet, an accepted draft, the verifier's own token).
    """

    def __init__(self, model, config: DecodingConfig, tokenizer=None, generator=None, observer=None, verifier=None):
        device = model.get_input_embeddings().weight.device
        self.model, self.config, self.tokenizer = model, config, tokenizer
        self.generator = generator_on(device, generator)  # sampling's, on the model's device
        self.observer = observer
        # on_tokens(row, tokens): a speculative decode hands out each row's verified tokens as soon as a
        # verification decides them (speculative.release), before the block's commit; `released` counts them
        self.on_tokens, self.released = None, {}
        self.tokens, self.backbone = model.special_tokens, model.backbone
        self.size = model.block_size
        self.steps = min(config.steps, self.size)
        self.speculative = config.speculative  # draft and verify (speculative.py) instead of an unmasking policy
        if verifier is not None:
            check_verifier(model, verifier, config)
        elif self.speculative:
            check_self_verifier(model)
        # a separate verifier runs as a decoder of its own, in step with this one: the same rows, columns and
        # blocks, its own cache (speculative.py)
        self.verifier = None if verifier is None else BlockDecoder(verifier, config, tokenizer)
        self.policy = None if self.speculative else config.policy
        self.layers = self.backbone.decoder.config.num_hidden_layers
        self.shift_logits = model.config.logit_shift  # position i - 1 predicts token i (SPEC §2)
        self.causal_context = model.config.context_attention == "causal"  # committed tokens attend causally
        self.batch = Batch.empty(self.size, device)
        self.next_id = 0  # the id of the next admitted row
        self.nfe = self.prefill_forwards = 0
        self.cache = BlockCache(self.layers, 0)
        self.column = 0  # first column of the current block
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (embeds, rope) of columns not cached yet
        self._mask: tuple[tuple, torch.Tensor] | None = None  # (shape key, mask): reused by every step of a block
        self._selected: tuple[tuple, BlockCache] | None = None  # (rows, their committed K/V) within a block

    # --- rows joining and leaving -------------------------------------------------------------------------------

    def admit(self, prompts: list[Prompt], max_new_tokens: list[int] | None = None,
              stop_strings: list[tuple[str, ...]] | None = None, checked: list[Prompt] | None = None) -> list[Row]:
        """Add rows before the next block; returns their records. Per row: its length limit and stop strings
        (default: the config's). An empty decode lays the prompts out as one batch; a running one prefills them
        (their blocks before the shared pending columns) with a forward of their own, and they join the next block.
        `checked`: the same prompts embedded by the separate verifier (its own image features), when there is one."""
        limits = max_new_tokens or [self.config.max_new_tokens] * len(prompts)
        stops = stop_strings or [self.config.stop_strings] * len(prompts)
        rows = [Row(self.next_id + index, limit, StopStrings(strings, self.tokenizer) if strings else None)
                for index, (limit, strings) in enumerate(zip(limits, stops))]
        self.next_id += len(rows)
        full_blocks = self.column // self.size if len(self.batch) else 0
        layout = prompt_layout(prompts, self.size, self.tokens.mask, self.tokens.pad, full_blocks)
        if self.verifier is not None:
            self._admit_verifier(checked, rows, limits, stops)
        if len(self.batch):
            self._join(layout, rows, max(limits))
        else:
            self._start(layout, rows, max(limits))
        self._mask = None
        return rows

    def _admit_verifier(self, checked: list[Prompt] | None, rows: list[Row], limits, stops) -> None:
        """The separate verifier admits the same rows; its prefill forwards count among this decode's."""
        if checked is None or len(checked) != len(rows):
            raise DiffusionVLError("a decode with a separate verifier admits each prompt twice: embedded by the "
                                   "drafting model and by the verifier (checked=build_prompts(verifier, ...)).")
        shadow = self.verifier
        forwards, prefilled = shadow.nfe, shadow.prefill_forwards
        for row, twin in zip(rows, shadow.admit(checked, limits, stops)):
            row.forwards += twin.forwards
        self.nfe += shadow.nfe - forwards
        self.prefill_forwards += shadow.prefill_forwards - prefilled

    def _opened(self, rows: list[Row], layout, start: int) -> Batch:
        """The rows of `layout` with their first generation block (columns from `start`) open."""
        block = layout.ids[:, start:]
        return Batch(rows, layout.offsets, layout.shift, block, layout.rope.shape[0], block != self.tokens.mask,
                     layout.embeds[:, start:], layout.rope[:, :, start:])

    def _start(self, layout, rows: list[Row], longest: int) -> None:
        """Lay out a first batch. The prompt's complete blocks are read once. Fused: they ride along with the first
        denoising step, like a finished block (block-causal attention keeps them blind to the masks). Separate: a
        forward of their own."""
        start = layout.full_blocks * self.size
        self.batch, self.column = self._opened(rows, layout, start), start
        self.cache = BlockCache(self.layers, start + self._room(longest))
        self.pending = None
        if start and self.config.commit == "separate":
            self.batch.carry = self._forward(layout.embeds[:, :start], layout.rope[:, :, :start])[:, -1]
            self.prefill_forwards += len(rows)
            self.cache.commit(start)
        elif start:
            self.pending = layout.embeds[:, :start], layout.rope[:, :, :start]

    def _join(self, layout, rows: list[Row], longest: int) -> None:
        """Rows of `layout` join the running ones: its first generation block lines up with the current block."""
        grow = layout.full_blocks * self.size - self.column  # >= 0: columns the old rows move right by
        old = self._with_first_block(self.batch)
        committed = self.cache.get_seq_length() + grow  # columns cached after the move; the rest is pending
        joining, lo, carry = self._prefill(layout, committed, rows)
        # room for the new rows' answers after the current block (as in _start), and for the old rows' as before
        room = self.column + grow + self._room(longest)
        capacity = max(self.cache.capacity + grow, room)
        self.cache = self.cache.rebuilt(grow, capacity, len(old), joining, lo, len(rows))
        old.offsets, old.shift = old.offsets + grow, old.shift - grow
        self.column += grow
        if self.pending is not None:
            self.pending = (torch.cat([self.pending[0], layout.embeds[:, committed : self.column]]),
                            torch.cat([self.pending[1], layout.rope[:, :, committed : self.column]], dim=1))
        new = self._opened(rows, layout, self.column)
        new.carry = carry
        self.batch = old.joined(new)
        self._selected = None

    def _room(self, longest: int) -> int:
        """Cache columns after the first block's start for answers of up to `longest` tokens: their blocks and a
        slack of 3; a speculative forward writes up to B blocks past the committed ones (speculative.py)."""
        extra = self.size * max(self.size, 2) if self.speculative else 0
        return (-(-longest // self.size) + 3) * self.size + extra

    def _with_first_block(self, batch: Batch) -> Batch:
        """`batch` holding first-block parts (zeros where the block is not a row's first) and, under logit_shift,
        a carry (zeros where none was read), so that joining rows' parts line up with them."""
        if batch.fixed is None:
            weight = self.model.get_input_embeddings().weight  # zeros of the embeddings' width and dtype; no lookup
            batch.fixed = torch.zeros_like(batch.block, dtype=torch.bool)
            batch.fixed_embeds = weight.new_zeros(*batch.block.shape, weight.shape[1])
            batch.first_rope = self._block_rope()
        if self.shift_logits and batch.carry is None:
            batch.carry = batch.fixed_embeds.new_zeros(len(batch), batch.fixed_embeds.shape[-1])
        return batch

    def _prefill(self, layout, committed: int, rows: list[Row]) -> tuple[BlockCache | None, int, torch.Tensor]:
        """K/V of joining rows' columns [lo, committed) (lo: their first prompt column, in whole blocks), from a
        forward of their own; lo; and their carry (k, H), the state of column committed - 1 (zeros if not read)."""
        lo = int(layout.offsets.min()) // self.size * self.size
        carry = layout.embeds.new_zeros(len(layout.ids), layout.embeds.shape[-1])
        if lo >= committed:
            return None, lo, carry
        cache = BlockCache(self.layers, committed - lo)
        hidden = self._run(layout.embeds[:, lo:committed], layout.rope[:, :, lo:committed], cache, layout.offsets - lo)
        cache.commit(committed - lo)
        self.prefill_forwards += len(rows)
        for row in rows:
            row.forwards += 1
        return cache, lo, hidden[:, -1]

    def cancel(self, row_id: int) -> None:
        """Row `row_id` leaves at the end of the current block (a client went away); a finished row is gone already."""
        for row in self.batch.rows:
            if row.id == row_id:
                row.cancel_requested = True
        if self.verifier is not None:
            self.verifier.cancel(row_id)

    # --- one block --------------------------------------------------------------------------------------------

    def _block_rope(self) -> torch.Tensor:
        """Rope positions (A, n, B) of the current block's generated tokens: column + the row's shift."""
        columns = torch.arange(self.column, self.column + self.size, device=self.batch.block.device)
        return (columns[None] + self.batch.shift[:, None]).expand(self.batch.axes, -1, -1)

    def _block_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (n, B, H) and rope positions (A, n, B) of the current block."""
        batch = self.batch
        embeds = self.model.get_input_embeddings()(batch.block)
        if batch.fixed is not None:
            return torch.where(batch.fixed[..., None], batch.fixed_embeds, embeds), batch.first_rope
        return embeds, self._block_rope()

    def _step_inputs(self, rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (k, Q, H) and rope (A, k, Q) of a step of `rows` (None: all): the block, after the pending
        columns (Q = B + pending) when they ride along with it."""
        embeds, rope = self._block_inputs()
        if rows is not None:
            embeds, rope = embeds[rows], rope[:, rows]
        if self.pending is None:
            return embeds, rope
        return torch.cat([self.pending[0], embeds], dim=1), torch.cat([self.pending[1], rope], dim=2)

    def _forward(self, embeds: torch.Tensor, rope: torch.Tensor, rows: torch.Tensor | None = None,
                 noisy: int = 0, layout: tuple[tuple[int, ...], tuple[int, ...]] | None = None) -> torch.Tensor:
        """Run `embeds` (n, Q, H) after the committed cache (their K/V are written, not kept: see kv_cache.py);
        returns their hidden states (n, Q, H). `rows` (k,): only those active rows take part (embeds (k, Q, H)).
        `noisy`: the last columns that are noisy (the block being denoised: B in a denoising step, else 0).
        `layout`: per column, its place after the cache and its segment, when columns repeat places (noisy copies
        of one block, which must not see each other: masks.block_causal_mask); default: one place each."""
        subset = None if rows is None else tuple(rows.tolist())
        cache = self.cache if rows is None else self._rows_cache(rows, subset)
        offsets = self.batch.offsets if rows is None else self.batch.offsets[rows]
        # the mask is rebuilt when rows join (admit resets it); rows that leave change the count, a subset is named
        key = (len(self.batch) if subset is None else subset, embeds.shape[1], cache.get_seq_length(), noisy, layout)
        hidden = self._run(embeds, rope, cache, offsets, key, noisy, layout)
        for index in range(len(self.batch)) if subset is None else subset:
            self.batch.rows[index].forwards += 1
        return hidden

    def _run(self, embeds, rope, cache: BlockCache, offsets: torch.Tensor, key: tuple | None = None,
             noisy: int = 0, layout: tuple[tuple[int, ...], tuple[int, ...]] | None = None) -> torch.Tensor:
        """One forward of `embeds` (n, Q, H) at rope positions (A, n, Q) after `cache`; rows start at `offsets`;
        the last `noisy` columns are the block being denoised (see masks.block_causal_mask)."""
        past, q = cache.get_seq_length(), embeds.shape[1]
        if key is None or self._mask is None or self._mask[0] != key:
            columns = torch.arange(past + q, device=embeds.device)
            segments = None
            if layout is not None:
                columns[past:] = past + torch.tensor(layout[0], device=embeds.device)
                segments = torch.tensor(layout[1], device=embeds.device)
            index = (columns[None] - offsets[:, None]).clamp(min=0)  # (n, K) sequence index: it defines the blocks
            valid = columns[None] >= offsets[:, None]
            mask = block_causal_mask(index[:, -q:], valid[:, -q:], index, valid, self.size, self.model.dtype,
                                     self.causal_context, noisy, segments)
            if key is None:
                return self._decode(embeds, mask, rope, cache, noisy)
            self._mask = (key, mask)
        return self._decode(embeds, self._mask[1], rope, cache, noisy)

    def _decode(self, embeds, mask, rope, cache, noisy: int) -> torch.Tensor:
        self.nfe += 1
        columns = torch.arange(embeds.shape[1], device=embeds.device)
        with self.model.adapters_on(columns >= embeds.shape[1] - noisy):  # draft-only adapters: the block alone
            return self.backbone.decode(embeds, mask, rope, cache, use_cache=True)

    def _rows_cache(self, rows: torch.Tensor, subset: tuple[int, ...]) -> BlockCache:
        """The committed K/V of `rows` (named by `subset`, their indices) alone, copied once per set within a block."""
        if self._selected is None or self._selected[0] != subset:
            room = self.size * max(self.size, 2) if self.speculative else self.size  # a verify forward: B blocks
            self._selected = (subset, self.cache.select_rows(rows, room))
        return self._selected[1]

    def _predicting_states(self, hidden: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """The states (k, B, H) that predict the current block's tokens, from a step's hidden states (k, Q, H):
        the last B, or under logit_shift the B before each position, the first being the row's carry."""
        if not self.shift_logits:
            return hidden[:, -self.size :]
        carry = self.batch.carry if rows is None else self.batch.carry[rows]
        return torch.cat([carry[:, None], hidden[:, -self.size : -1]], dim=1)

    def denoise_block(self) -> None:
        """Fill every mask of the current block. Its K/V are never committed here. A row whose block is complete
        leaves the block's remaining steps: they run on the rows that still hold masks."""
        batch, config = self.batch, self.config
        masked = answer = batch.block == self.tokens.mask  # (n, B)
        schedule = static_schedule(self.size, self.steps)  # B over S steps, whatever the first block holds
        taken = torch.zeros(len(batch), dtype=torch.long, device=batch.block.device)  # steps each row took part in
        self._selected = None  # the committed cache changed since the last block
        for step in range(self.steps):
            live = masked.any(1)
            if not bool(live.any()):
                break
            # propose: one forward of the rows that still hold masks. Every row holds one at the first step, the
            # only one the pending columns (the finished block or the prompt) ride along with, to be cached.
            rows = None if bool(live.all()) else live.nonzero()[:, 0]
            part = slice(None) if rows is None else rows
            ridden = 0 if self.pending is None else self.pending[0].shape[1]
            hidden = self._forward(*self._step_inputs(rows), rows, noisy=self.size)
            self.cache.commit(ridden)  # keep the ridden-along K/V; the current block's are not kept
            self.pending = None
            if self.shift_logits and ridden:  # the column before the block was just read
                batch.carry = hidden[:, -self.size - 1]
            elif self.shift_logits and batch.carry is None:  # no prefill: position 0 predicts itself (a prompt token)
                batch.carry = hidden[:, -self.size]
            still = masked[part]
            token, confidence = propose_masked(  # logits only where a token is still to be chosen
                self.backbone.head(self._predicting_states(hidden, rows)[still]), still, self.tokens.never_generated,
                config.temperature, config.top_k, config.top_p, self.generator)
            # select: the policy picks which proposals to keep this step
            context = StepContext(step, self.steps, step_quota(schedule, step, still))
            block, still = commit_step(self.policy, token, confidence, batch.block[part], still, context)
            # commit: write them into the block; after an end-of-turn every mask settles as end-of-turn too
            block, still = settle_after_end(block, still, answer[part], self.tokens.eot)
            batch.block, masked = batch.block.index_put((live,), block), masked.index_put((live,), still)
            taken += live
            if self.observer is not None:
                self.observer(batch.rows, step, batch.block, masked)
        # finish: a row whose block is complete has left the steps; record how many it took
        for row, steps in zip(batch.rows, taken.tolist()):
            row.block_steps.append(steps)

    def commit_block(self) -> list[tuple[Row, list[int]]]:
        """Record the finished block, let finished rows leave, and store the block's K/V for the rows that go on:
        fused, during the next block's first forward; separate, with a forward of its own now. Returns, per row of
        the block, (its record, its new tokens); a row whose record says finished has left the decode."""
        batch = self.batch
        if self.verifier is not None:  # it ends the same rows by the same rule, and follows to the next block
            self.verifier.batch.block, self.verifier.batch.draft = batch.block, batch.draft
            self.verifier.commit_block()
        starts = batch.fixed.sum(1).tolist() if batch.fixed is not None else [0] * len(batch)
        updates = [(row, row.extend(tokens[start:], self.tokens.eot)[self.released.pop(row.id, 0):])
                   for row, tokens, start in zip(batch.rows, batch.block.tolist(), starts)]
        finished_inputs = self._block_inputs()
        batch.fixed = batch.fixed_embeds = batch.first_rope = None
        keep = [index for index, row in enumerate(batch.rows) if not row.finished]
        if len(keep) < len(batch):
            index = torch.tensor(keep, dtype=torch.long, device=batch.block.device)
            self.cache.batch_select_indices(index)
            self.batch = batch = batch.select(index)
            finished_inputs = finished_inputs[0][index], finished_inputs[1][:, index]
        if keep and self.speculative:  # its K/V were committed by the verification that accepted it
            batch.block, batch.draft = batch.draft, None
        elif keep and self.config.commit == "separate":
            batch.carry = self._forward(*finished_inputs)[:, -1]
            self.cache.commit(self.size)
        elif keep:
            self.pending = finished_inputs
        self.column += self.size
        if not self.speculative:
            batch.block = torch.full_like(batch.block, self.tokens.mask)
        if keep and len(keep) < len(updates):
            self._drop_padding()
        return updates

    def _drop_padding(self) -> None:
        """Columns left of every remaining row's first one (whole blocks, committed) are read by no one: cut them,
        so a long-running decode does not attend over the padding of rows long gone."""
        batch = self.batch
        drop = min(int(batch.offsets.min()), self.cache.get_seq_length()) // self.size * self.size
        if drop:
            self.cache = self.cache.rebuilt(-drop, self.cache.capacity - drop, len(batch))
            batch.offsets, batch.shift, self.column = batch.offsets - drop, batch.shift + drop, self.column - drop
            self._mask = None

    def step(self) -> list[tuple[Row, list[int]]]:
        """Denoise and commit one block for every active row; see `commit_block` for what it returns."""
        if self.speculative:
            speculate_block(self)
        else:
            self.denoise_block()
        return self.commit_block()

    def run(self, streamer=None) -> DecodingOutput:
        """Step until every row is finished; `streamer` gets row 0's tokens block by block, or (speculative) run
        by accepted run. Returns the output of the rows that were active when it started, in admission order."""
        def stream(row: Row, new: list[int]) -> None:
            if row.id == 0 and new:
                streamer.put(torch.tensor(new, device="cpu"))  # streamers decode on the CPU

        done = {}
        if streamer is not None:
            self.on_tokens = stream
        while len(self.batch):
            for row, new in self.step():
                if streamer is not None:
                    stream(row, new)
                if row.finished:
                    done[row.id] = row
        if streamer is not None:
            streamer.end()
        return DecodingOutput.from_records([done[key] for key in sorted(done)], self.nfe, self.tokens.pad,
                                           self.batch.block.device, self.prefill_forwards)


def generate(model, input_ids, attention_mask, config: DecodingConfig, streamer=None, tokenizer=None, generator=None,
             vision=None, verifier=None):
    """Decode a batch of prompts. `config.use_cache=False` runs the reference decoder instead. `verifier`: a
    separate verifier of speculative drafts (DiffusionVL.as_verifier), else the model's own causal mode."""
    ids, valid = check_inputs(model, input_ids, attention_mask, config, streamer)
    was_training = model.training
    if was_training:  # .eval() walks every module (milliseconds on a small model): only when it changes something
        model.eval()
    try:
        with torch.no_grad():
            prompts = build_prompts(model, ids, valid, vision)  # also for the reference: same image errors, first
            if not config.use_cache:
                return reference_decode(model, ids, valid, vision, config, tokenizer, generator, verifier)
            if streamer is not None:
                streamer.put(prompts[0].ids.cpu())  # transformers' streamers expect the prompt first (skip_prompt)
            decoder = BlockDecoder(model, config, tokenizer, generator, verifier=verifier)
            decoder.admit(prompts, checked=None if verifier is None else build_prompts(verifier, ids, valid, vision))
            return decoder.run(streamer)
    finally:
        if was_training:
            model.train()
