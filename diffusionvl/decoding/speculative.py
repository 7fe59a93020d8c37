"""Self-speculative decoding (`remasking_strategy="speculative"`): the diffusion head drafts a block in parallel,
the model's own causal mode verifies it, and the longest prefix that equals the causal mode's greedy choice is
kept, plus that mode's next token. The output is the causal mode's greedy decode, token for token.

It needs a causal-context translation with logit shift: its clean stream is then a causal LM (inference.causal_model;
with draft-only adapters, the source itself), so one forward can carry both halves of a step (B = block size):

    [ block k as clean rows: its tokens, fixed or drafted | block k + 1 as masks ]      (n, 2B) after the cache
      the state before each clean row is the           |  the masks attend to every clean row before them:
      causal mode's next-token choice: it verifies     |  the draft of block k + 1, valid when block k is
      block k's drafts (the first from the carry)      |  accepted whole

When a row's block k is accepted whole, the clean rows' K/V are its committed K/V and its next block's draft is
ready. After a partial accept, the verifier's correction is kept and the rest of the block is masked again and
redrafted, with the kept tokens fixed, the way a first block holding prompt tokens is decoded; then verified
again. Rows of a batch accept different lengths: a row whose block is done waits for the others at the block
boundary, so the batch keeps one column layout (rows.Batch); the rows still at work run as a subset.

Only greedy decoding is lossless this way: sampling would need the draft's distribution in the acceptance rule,
so temperature > 0 is refused (config.py).
"""

import torch

from ..errors import DiffusionVLError
from .kv_cache import BlockCache
from .sampling import propose_masked


def check_self_verifier(model) -> None:
    """The model verifies its own drafts only if its clean stream is a causal LM whose states predict the next
    token (its causal mode)."""
    config = model.config
    if config.context_attention != "causal" or not config.logit_shift:
        raise DiffusionVLError(
            "speculative decoding verifies drafts with the model's own causal mode, which only a translation with "
            f"context_attention='causal' and logit_shift has; this one has context_attention="
            f"{config.context_attention!r} and logit_shift={config.logit_shift}. Use another remasking_strategy, or "
            "translate with --context-attention causal --logit-shift.")


def speculate_block(decoder) -> None:
    """Finish the current block of every row (decoding.engine.BlockDecoder): draft where it holds masks, verify,
    repeat until every position is verified. Leaves block k's K/V committed, `batch.carry` the state before
    block k + 1 and `batch.draft` its draft (masks where a row has none)."""
    batch, size, mask = decoder.batch, decoder.size, decoder.tokens.mask
    verified = batch.fixed.clone() if batch.fixed is not None else torch.zeros_like(batch.block, dtype=torch.bool)
    answer = ~verified  # the positions this block generates (not prompt tokens)
    next_draft = torch.full_like(batch.block, mask)
    next_carry = None  # (n, H), from the verify forward that finishes each row's block
    taken = torch.zeros(len(batch), dtype=torch.long, device=batch.block.device)
    settled = torch.zeros(len(batch), dtype=torch.bool, device=batch.block.device)  # block k final, and so are its
    decoder._selected = None  # K/V, carry and next draft; the committed cache changed since the last block
    while not bool(settled.all()):
        drafting = ((batch.block == mask) & ~verified).any(1)
        if bool(drafting.any()) or decoder.pending is not None:
            taken += _draft(decoder, drafting, verified)
        rows = None if not bool(settled.any()) else (~settled).nonzero()[:, 0]
        part = slice(None) if rows is None else rows
        hidden, cache = _verify_forward(decoder, rows)
        taken += ~settled
        block, now, decided, exact = _accept(decoder, hidden, rows, batch.block[part], verified[part], answer[part])
        index = _indices(rows, len(batch))
        for row, count, checked in zip(index.tolist(), decided.tolist(), (~verified[part]).any(1).tolist()):
            if checked:
                batch.rows[row].accepted.append(count)
        batch.block, verified = batch.block.index_put((~settled,), block), verified.index_put((~settled,), now)
        done = exact & now.all(1)  # the clean rows held the final block: their K/V, last state and masks count
        if bool(done.any()):
            finished = index[done]
            next_draft[finished] = _next_draft(decoder, hidden[done])
            next_carry = batch.carry.clone() if next_carry is None else next_carry
            next_carry[finished] = hidden[done, size - 1]
            if rows is not None:  # a subset forward wrote into a copy of the cache: bring their K/V home
                decoder.cache.write_rows(finished, cache, done.nonzero()[:, 0], decoder.cache.get_seq_length(), size)
            settled[finished] = True
        if decoder.observer is not None:
            decoder.observer(batch.rows, int(taken.max()) - 1, batch.block, ~verified)
    decoder.cache.commit(size)
    batch.carry, batch.draft = next_carry, next_draft
    for row, steps in zip(batch.rows, taken.tolist()):
        row.block_steps.append(steps)


def _indices(rows: torch.Tensor | None, n: int) -> torch.Tensor:
    return torch.arange(n) if rows is None else rows.cpu()


def _draft(decoder, drafting: torch.Tensor, verified: torch.Tensor) -> torch.Tensor:
    """One denoising forward of the rows whose block holds masks (all rows when prompt columns ride along, to be
    cached): every mask gets the head's greedy token at once. Returns which rows took part (n,)."""
    batch, size = decoder.batch, decoder.size
    everyone = decoder.pending is not None or bool(drafting.all())
    rows = None if everyone else drafting.nonzero()[:, 0]
    part = slice(None) if rows is None else rows
    ridden = 0 if decoder.pending is None else decoder.pending[0].shape[1]
    hidden = decoder._forward(*decoder._step_inputs(rows), rows, noisy=size)
    decoder.cache.commit(ridden)  # the prompt columns that rode along; the block's K/V are not kept
    decoder.pending = None
    if ridden:  # the column before the block was just read
        batch.carry = hidden[:, -size - 1]
    elif batch.carry is None:  # no prefill: position 0 predicts itself (a prompt token)
        batch.carry = hidden[:, -size]
    still = (batch.block[part] == decoder.tokens.mask) & ~verified[part]
    token, _ = propose_masked(decoder.backbone.head(decoder._predicting_states(hidden, rows)[still]), still,
                              decoder.tokens.never_generated, 0.0)
    took = drafting if rows is not None else torch.ones_like(drafting)
    batch.block = batch.block.index_put((took,), torch.where(still, token, batch.block[part]))
    return took


def _verify_forward(decoder, rows: torch.Tensor | None) -> tuple[torch.Tensor, BlockCache]:
    """The forward of `rows` (None: all) carrying their block as clean rows and the next block as masks; returns
    its hidden states (k, 2B, H) and the cache it wrote block k's K/V into."""
    batch, size = decoder.batch, decoder.size
    embeds, rope = decoder._block_inputs()
    masks = decoder.model.get_input_embeddings()(torch.full_like(batch.block, decoder.tokens.mask))
    next_rope = decoder._block_rope() + size
    embeds, rope = torch.cat([embeds, masks], dim=1), torch.cat([rope, next_rope], dim=2)
    if rows is not None:
        embeds, rope = embeds[rows], rope[:, rows]
    hidden = decoder._forward(embeds, rope, rows, noisy=size)
    cache = decoder.cache if rows is None else decoder._selected[1]
    return hidden, cache


def _accept(decoder, hidden, rows, block, verified, answer):
    """Verify a block (k, B) from its forward's clean states: keep the drafts up to the first one that differs from
    the causal mode's greedy choice, put that choice there, mask the rest again. After an end-of-turn at an answer
    position the block is decided: end-of-turn to its end. Returns the new (block, verified); per row the tokens
    this verification decided (accepted drafts and the correction) and whether its clean rows held the final block
    (nothing corrected, or the answer ended: a row that ends needs no K/V); each (k,)."""
    size, eot, mask = decoder.size, decoder.tokens.eot, decoder.tokens.mask
    carry = decoder.batch.carry if rows is None else decoder.batch.carry[rows]
    states = torch.cat([carry[:, None], hidden[:, : size - 1]], dim=1)  # the state before each position
    check = ~verified
    choice, _ = propose_masked(decoder.backbone.head(states[check]), check, decoder.tokens.never_generated, 0.0)
    choice = torch.where(check, choice, block)
    positions = torch.arange(size, device=block.device)
    first = torch.where(choice != block, positions, size).amin(1, keepdim=True)  # (k, 1): B when all agree
    now = verified | (positions <= first)
    decided = (now & ~verified).sum(1)
    block = torch.where(now, choice, torch.full_like(block, mask))
    ended = (block == eot) & answer & now
    after = positions > torch.where(ended, positions, size).amin(1, keepdim=True)
    exact = (first[:, 0] == size) | ended.any(1)
    return block.masked_fill(after, eot), now | after, decided, exact


def _next_draft(decoder, hidden: torch.Tensor) -> torch.Tensor:
    """The draft of the next block (k, B) from the masks' states: greedy, the first from the last clean row."""
    size = decoder.size
    states = torch.cat([hidden[:, size - 1 : size], hidden[:, size : 2 * size - 1]], dim=1)
    every = torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
    token, _ = propose_masked(decoder.backbone.head(states.flatten(0, 1)), every, decoder.tokens.never_generated, 0.0)
    return token
