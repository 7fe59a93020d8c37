"""Speculative decoding (`remasking_strategy="speculative"`): the diffusion head drafts a block in parallel, a
verifier checks it, and the longest prefix that equals the verifier's greedy choice is kept, plus the verifier's
own token after it. The output is the verifier's greedy decode, token for token. The verifier is the model's own
causal mode (self-speculative, below), or a separate autoregressive model (at the end).

It needs a causal-context translation with logit shift: its clean stream is then a causal LM (inference.causal_model;
with draft-only adapters, the source itself). One forward carries every part of a step (B = block size, the
current block k holds v verified tokens, then drafts):

    [ block k, clean | block k, noisy: copy c keeps tokens < v + c, the rest masks | block k + 1, masks ]
      causal rows:     | c = 0 .. speculative_copies - 1 (config.py); the copies do  | noisy: attends to the
      the state before | not see each other (masks.py segments)                     | clean rows of block k
      each row verifies|                                                            |

- The clean rows verify: the first draft that differs from the causal mode's choice (at position a) is replaced
  by that choice. Where a copy keeps exactly the positions before a, it holds the redraft of the positions after
  it, made with the accepted tokens kept, the way a first block holding prompt tokens is decoded, and no forward
  is spent on redrafting; otherwise those positions become masks again and are drafted by a forward of their own.
- When every draft is accepted, the masks of block k + 1 are its draft, whose first token comes from the last
  clean state: it is the causal mode's own next token (the "bonus"), verified as it is drafted. Block k's K/V are
  committed from this forward. When the last position was corrected, the clean rows held a wrong token there:
  one more forward, with nothing left to check, gives the K/V and the next draft.

Rows of a batch accept different lengths: a row whose block is done waits for the others at the block boundary, so
the batch keeps one column layout (rows.Batch); the rows still at work run as a subset. A block that holds masks
(a first block, a row that just joined) is drafted by one denoising forward first.

A separate verifier (`generate(..., verifier=ar_model)`; DiffusionVL.as_verifier wraps it as an untrained causal
translation with logit shift, so its clean stream is the AR model itself) runs as a decoder of its own in step with
the drafter: the same rows, columns and blocks, its own cache and prompt embeddings (engine.BlockDecoder.verifier).
The drafter needs logit shift only (block-causal context drafts too). A step: the verifier's causal forward over
block k first (its prompt riding along at the first block), whose states give the choice and the bonus; then,
unless every answer ended, the drafter's forward with block k as corrected, one copy that keeps the decided
positions (the correction included: one copy serves any rejection) and block k + 1 as masks. Two forwards a step,
both counted; a draft of a first block's first position is the drafter's, checked like any other.

An observer (engine.BlockDecoder) sees a block as drafted by the forward before it (step -1), then after each of
its forwards: its tokens, which are masks, and a verdict per position (VERDICTS): a draft not checked yet, a
draft the verifier accepted, or the verifier's own token (a corrected draft, a block's first token, the
end-of-turn settling after an answer's end).

Only greedy decoding is lossless this way: sampling would need the draft's distribution in the acceptance rule,
so temperature > 0 is refused (config.py).
"""

from dataclasses import dataclass

import torch

from ..errors import DiffusionVLError
from .kv_cache import BlockCache
from .sampling import propose_masked

DRAFT, ACCEPTED, CORRECTED = 0, 1, 2  # a position's verdict (the observer's `verdict`, the server's trace)
VERDICTS = ("draft", "accepted", "corrected")


def check_self_verifier(model) -> None:
    """The model verifies its own drafts only if its clean stream is a causal LM whose states predict the next
    token (its causal mode)."""
    config = model.config
    if config.context_attention != "causal" or not config.logit_shift:
        raise DiffusionVLError(
            "speculative decoding verifies drafts with the model's own causal mode, which only a translation with "
            f"context_attention='causal' and logit_shift has; this one has context_attention="
            f"{config.context_attention!r} and logit_shift={config.logit_shift}. Pass a verifier (an AR model, e.g. "
            "its source: verifier= / --verifier), use another remasking_strategy, or translate with "
            "--context-attention causal --logit-shift.")


def check_verifier(model, verifier, config) -> None:
    """A separate verifier (`DiffusionVL.as_verifier`: an AR model wrapped as an untrained causal translation with
    logit shift, so its clean stream is that model) checks the drafts of `model`, a translation with logit shift
    (its drafts continue from the state before each block), in blocks of the same size, with the same tokens."""
    if not config.speculative:
        raise DiffusionVLError("a verifier checks speculative drafts; decode with remasking_strategy='speculative' "
                               f"(got {config.remasking_strategy!r}), or leave the verifier out.")
    if not model.config.logit_shift:
        raise DiffusionVLError("drafting for a separate verifier needs a translation with logit_shift (position i - 1 "
                               "predicts token i); this one has none. Decode it with its own policies instead.")
    check_self_verifier(verifier)
    mine, theirs = model.special_tokens, verifier.special_tokens
    if verifier.block_size != model.block_size or (mine.mask, mine.eot, mine.pad) != (theirs.mask, theirs.eot,
                                                                                      theirs.pad):
        raise DiffusionVLError(
            f"the verifier does not line up with the model: block size {verifier.block_size} vs {model.block_size}, "
            f"(mask, end-of-turn, pad) {(theirs.mask, theirs.eot, theirs.pad)} vs {(mine.mask, mine.eot, mine.pad)}; "
            "wrap it with model.as_verifier(ar_model), which takes the model's own, and use the tokenizer they share.")


def copies_of(config, size: int) -> int:
    """How many noisy copies of the block a verify forward carries at most: config.speculative_copies, by default
    one per place the first wrong draft may sit (B - 1)."""
    return size - 1 if config.speculative_copies is None else config.speculative_copies


def greedy(decoder, states: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """The greedy tokens (k, B) of `states` (k, B, H) where `where` (k, B) holds (0 elsewhere); the head runs there
    only."""
    token, _ = propose_masked(decoder.backbone.head(states[where]), where, decoder.tokens.never_generated, 0.0)
    return token


def speculate_block(decoder) -> None:
    """Finish the current block of every row (decoding.engine.BlockDecoder): draft where it holds masks, then
    verify until every row's block is final. Leaves block k's K/V committed (the verifier's too), `batch.carry`
    the state before block k + 1 and `batch.draft` its draft."""
    batch, mask, shadow = decoder.batch, decoder.tokens.mask, decoder.verifier
    # verified: prompt tokens, and a first position that holds a token (the bonus of the last block)
    fixed = torch.zeros_like(batch.block, dtype=torch.bool) if batch.fixed is None else batch.fixed
    verified = fixed.clone()
    verified[:, 0] |= batch.block[:, 0] != mask
    verdict = torch.full_like(batch.block, DRAFT)
    verdict[:, 0] = torch.where(verified[:, 0] & ~fixed[:, 0], CORRECTED, DRAFT)  # the bonus: the verifier's own
    answer, following = ~fixed, _Next(torch.full_like(batch.block, mask))
    taken = torch.zeros(len(batch), dtype=torch.long, device=batch.block.device)
    settled = torch.zeros(len(batch), dtype=torch.bool, device=batch.block.device)  # block k final, K/V and all
    for owner in (decoder, shadow) if shadow is not None else (decoder,):
        owner._selected = None  # the committed cache changed since the last block
    if decoder.observer is not None and bool(((batch.block != mask) & ~fixed)[:, 1:].any()):
        decoder.observer(batch.rows, -1, batch.block, batch.block == mask, verdict)  # the draft, before any forward
    while not bool(settled.all()):
        drafting = ((batch.block == mask) & ~verified).any(1)
        if bool(drafting.any()) or decoder.pending is not None:
            taken += _draft(decoder, drafting, verified, verdict)
        rows = None if not bool(settled.any()) else (~settled).nonzero()[:, 0]
        part = slice(None) if rows is None else rows
        check = _check_self if shadow is None else _check_separately
        forwards, drafter, states, result = check(decoder, rows, verified[part], answer[part])
        block, now, decided, exact, bonus, kind = result
        taken += (~settled) * forwards
        index = torch.arange(len(batch)) if rows is None else rows.cpu()
        verdict = verdict.index_put((~settled,), torch.where(now & ~verified[part], kind, verdict[part]))
        batch.block, verified = batch.block.index_put((~settled,), block), verified.index_put((~settled,), now)
        done = exact & now.all(1)  # the clean rows held the final block: their K/V, last state and masks count
        for row, count, extra in zip(index.tolist(), decided.tolist(), (done & bonus).tolist()):
            if count or extra:  # the next block's first token (the bonus) is decided by this forward too
                batch.rows[row].accepted.append(count + extra)
        if bool(done.any()):
            following.settle(decoder, index, done, rows is not None, drafter, states)
            settled[index[done]] = True
        if decoder.observer is not None:
            decoder.observer(batch.rows, int(taken.max()) - 1, batch.block, batch.block == mask, verdict)
        release(decoder, verified & answer)
    following.commit(decoder)
    for row, steps in zip(batch.rows, taken.tolist()):
        row.block_steps.append(steps)


class _Next:
    """What the rows whose block is final leave for block k + 1: its draft (n, B), the state before it (the
    drafter's carry, and the verifier's), and their K/V of block k, brought home from a subset's cache copy."""

    def __init__(self, draft: torch.Tensor):
        self.draft, self.carry, self.check = draft, None, None

    def settle(self, decoder, index, done, subset: bool, drafter, states) -> None:
        """The rows of this verification (`index`: their batch rows) that are `done` are final. `drafter`: its
        forward (_Drafted), None when it did not run (every answer ended: nothing of it is needed); a subset forward
        wrote into a copy of the cache, whose K/V of those rows are brought home."""
        size, shadow = decoder.size, decoder.verifier
        self.carry = decoder.batch.carry.clone() if self.carry is None else self.carry
        mine = done if drafter is None else done & drafter.ran  # settled rows the drafter read
        if drafter is not None and bool(mine.any()):
            at = (drafter.ran.cumsum(0) - 1)[mine]  # their rows in the drafter's forward
            bonus = greedy(_checking(decoder), states[mine, size:], torch.ones_like(mine[mine, None]))
            drafts = greedy(decoder, drafter.hidden[at, -size:-1], torch.ones_like(bonus.expand(-1, size - 1),
                                                                                   dtype=torch.bool))
            self.draft[index[mine]] = torch.cat([bonus, drafts], dim=1)  # the bonus, then block k + 1's masks
            self.carry[index[mine]] = drafter.hidden[at, size - 1]
            if drafter.subset:
                decoder.cache.write_rows(index[mine], drafter.cache, at, decoder.cache.get_seq_length(), size)
        if shadow is not None:
            self.check = shadow.batch.carry.clone() if self.check is None else self.check
            self.check[index[done]] = states[done, size]
            if subset:
                shadow.cache.write_rows(index[done], shadow._selected[1], done.nonzero()[:, 0],
                                        shadow.cache.get_seq_length(), size)

    def commit(self, decoder) -> None:
        decoder.cache.commit(decoder.size)
        decoder.batch.carry, decoder.batch.draft = self.carry, self.draft
        if decoder.verifier is not None:
            decoder.verifier.cache.commit(decoder.size)
            decoder.verifier.batch.carry = self.check


def _checking(decoder):
    """The decoder whose head reads the verifying states: the separate verifier's, else the model's own."""
    return decoder if decoder.verifier is None else decoder.verifier


def _verifier_states(decoder, hidden: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """(k, B + 1, H): the clean states that predict block k's positions and the token after it: the state before
    the block, then the block's. With no separate verifier they are the drafter's own (its verify forward's clean
    rows); else the verifier's, from a causal forward of its own over the block (after its pending prompt
    columns, cached by it), counted in the decode's forwards."""
    size, shadow = decoder.size, decoder.verifier
    part = slice(None) if rows is None else rows
    if shadow is None:
        return torch.cat([decoder.batch.carry[part][:, None], hidden[:, :size]], dim=1)
    shadow.batch.block = decoder.batch.block
    ridden = 0 if shadow.pending is None else shadow.pending[0].shape[1]  # only at a block's first forward: all rows
    states = shadow._forward(*shadow._step_inputs(rows), rows)
    shadow.cache.commit(ridden)
    shadow.pending = None
    if ridden:  # the column before the block was just read
        shadow.batch.carry = states[:, -size - 1]
    elif shadow.batch.carry is None:  # no prefill: position 0 holds a prompt token, never checked
        shadow.batch.carry = states[:, -size]
    decoder.nfe += 1
    for index in range(len(decoder.batch)) if rows is None else rows.tolist():
        decoder.batch.rows[index].forwards += 1
    return torch.cat([shadow.batch.carry[part][:, None], states[:, -size:]], dim=1)


def _draft(decoder, drafting: torch.Tensor, verified: torch.Tensor, verdict: torch.Tensor) -> torch.Tensor:
    """One denoising forward of the rows whose block holds masks (all rows when prompt columns ride along, to be
    cached): every mask gets the head's greedy token at once. Returns which rows took part (n,)."""
    batch, size = decoder.batch, decoder.size
    took = torch.ones_like(drafting) if decoder.pending is not None else drafting
    rows = None if bool(took.all()) else took.nonzero()[:, 0]
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
    token = greedy(decoder, decoder._predicting_states(hidden, rows), still)
    batch.block = batch.block.index_put((took,), torch.where(still, token, batch.block[part]))
    if decoder.verifier is None:  # a first position drafted from the clean state before it is the causal mode's
        verified[took, 0] |= still[:, 0]
        verdict[took, 0] = torch.where(still[:, 0], CORRECTED, verdict[took, 0])
    return took


def _verify_forward(decoder, rows: torch.Tensor | None, block: torch.Tensor, kept: torch.Tensor,
                    copies: int) -> tuple[torch.Tensor, BlockCache]:
    """The forward of `rows` (None: all) carrying their block (k, B) as clean rows, `copies` noisy copies of it
    (copy c of a row keeps its first kept + c positions, kept (k,)) and the next block as masks; returns its hidden
    states (k, Q, H) and the cache it wrote block k's K/V into."""
    batch, size, mask = decoder.batch, decoder.size, decoder.tokens.mask
    embed = decoder.model.get_input_embeddings()
    part = slice(None) if rows is None else rows
    next_rope = decoder._block_rope()[:, part] + size
    rope = decoder._block_rope()[:, part] if batch.fixed is None else batch.first_rope[:, part]

    def inputs(ids: torch.Tensor) -> torch.Tensor:  # prompt tokens keep the prompt's embeddings (images)
        if batch.fixed is None:
            return embed(ids)
        return torch.where(batch.fixed[part, :, None], batch.fixed_embeds[part], embed(ids))

    positions = torch.arange(size, device=block.device)
    noisy = [inputs(torch.where(positions < kept[:, None] + c, block, mask)) for c in range(copies)]
    embeds = torch.cat([inputs(block), *noisy, embed(torch.full_like(block, mask))], dim=1)
    ropes = torch.cat([rope] * (1 + copies) + [next_rope], dim=2)
    places = tuple(range(size)) * (1 + copies) + tuple(range(size, 2 * size))  # the copies sit on block k
    segments = tuple([0] * size + [c + 1 for c in range(copies) for _ in range(size)] + [0] * size)
    hidden = decoder._forward(embeds, ropes, rows, noisy=(copies + 1) * size, layout=(places, segments))
    return hidden, decoder.cache if rows is None else decoder._selected[1]


def release(decoder, final: torch.Tensor) -> None:
    """Hand each row's decided answer tokens (`final` (n, B): a prefix of its answer positions) to
    `decoder.on_tokens` now, as far as the row keeps them (Row.would_keep), so a stream goes by accepted run
    rather than by block; the block's commit returns only the rest (engine.commit_block)."""
    if decoder.on_tokens is None:
        return
    for row, ids, keep in zip(decoder.batch.rows, decoder.batch.block.tolist(), final.tolist()):
        sent = decoder.released.get(row.id, 0)
        if sum(keep) <= sent:  # nothing decided since the last hand-out (a row keeps at most what is decided)
            continue
        kept = row.would_keep([token for token, decided in zip(ids, keep) if decided], decoder.tokens.eot)
        if len(kept) > sent:
            decoder.on_tokens(row, kept[sent:])
            decoder.released[row.id] = len(kept)


@dataclass
class _Drafted:
    """The drafter's verify forward: hidden states (d, Q, H) of the rows it ran for (`ran`, (k,) over the
    verification's rows), the cache it wrote their K/V into, and whether that is a copy (a subset ran)."""

    hidden: torch.Tensor
    cache: BlockCache
    ran: torch.Tensor
    subset: bool


def _check_self(decoder, rows, verified: torch.Tensor, answer: torch.Tensor):
    """One verification by the model's own causal mode: the drafter's forward carries the block as clean rows
    (their states verify it), its noisy copies (copy c keeps the verified positions and c drafts after them) and
    the next block's masks. Returns (forwards, _Drafted, verifier states, _decide's result)."""
    size = decoder.size
    block = decoder.batch.block if rows is None else decoder.batch.block[rows]
    kept = verified.sum(1)  # (k,) verified positions are a prefix
    copies = max(0, min(copies_of(decoder.config, size), size - 1 - int(kept.min())))
    hidden, cache = _verify_forward(decoder, rows, block, kept, copies)
    states = _verifier_states(decoder, hidden, rows)
    choice, first, now = _verdict(decoder, states, block, verified)
    redraft = _redrafts(decoder, hidden, block, first, first - kept, copies)  # the copy that kept exactly < first
    drafted = _Drafted(hidden, cache, torch.ones_like(first, dtype=torch.bool), rows is not None)
    return 1, drafted, states, _decide(decoder, choice, redraft, first, now, verified, answer)


def _check_separately(decoder, rows, verified: torch.Tensor, answer: torch.Tensor):
    """One verification by a separate verifier: its forward first; then the drafter's, for the rows whose answer
    did not end here, with the block as corrected (clean rows), one copy keeping exactly the decided positions
    (the correction included) whose masks redraft the rest, and the next block's masks. Returns as _check_self
    (no _Drafted when every answer ended)."""
    size, eot = decoder.size, decoder.tokens.eot
    block = decoder.batch.block if rows is None else decoder.batch.block[rows]
    states = _verifier_states(decoder, None, rows)
    choice, first, now = _verdict(decoder, states, block, verified)
    going = ~((choice == eot) & answer & now).any(1)  # (k,) an ended answer needs nothing of the drafter
    if not bool(going.any()):
        return 1, None, states, _decide(decoder, choice, block, first, now, verified, answer)
    some = None if bool(going.all()) else going.nonzero()[:, 0]
    them = rows if some is None else some if rows is None else rows[some]  # the drafter's rows (None: all)
    sel = slice(None) if some is None else some
    corrected, redo = torch.where(now, choice, block), first <= size - 2  # (k,): redrafted after the correction
    copies = int(bool(redo[sel].any())) * min(1, copies_of(decoder.config, size))  # (speculative_copies=0: none)
    hidden, cache = _verify_forward(decoder, them, corrected[sel], torch.where(redo, first + 1, size)[sel], copies)
    redraft = corrected.clone()
    redraft[sel] = _redrafts(decoder, hidden, corrected[sel], first[sel], torch.zeros_like(first[sel]), copies)
    drafted = _Drafted(hidden, cache, going, them is not None)
    return 2, drafted, states, _decide(decoder, choice, redraft, first, now, verified, answer)


def _verdict(decoder, states: torch.Tensor, block: torch.Tensor, verified: torch.Tensor):
    """The verifier's greedy choice (k, B) at the unverified positions of `block` (from its states (k, B + 1, H)),
    the first position (k,) where it differs from the draft (B when all agree), and the positions decided now."""
    size = decoder.size
    choice = torch.where(verified, block, greedy(_checking(decoder), states[:, :size], ~verified))
    positions = torch.arange(size, device=block.device)
    first = torch.where(choice != block, positions, size).amin(1)
    return choice, first, verified | (positions <= first[:, None])


def _decide(decoder, choice, redraft, first: torch.Tensor, now, verified, answer):
    """The blocks (k, B) after a verification: the choice where decided, the redraft after it; after an
    end-of-turn at an answer position, end-of-turn to the block's end. Returns (block, verified); per row the
    tokens this verification decided (accepted drafts and the correction), whether the clean rows held the final
    block (nothing corrected, or the answer ended: such a row needs no K/V) and whether the row goes on after the
    block (its next block's first token is then decided too); and the verdict of each decided position."""
    size, eot = decoder.size, decoder.tokens.eot
    positions = torch.arange(size, device=choice.device)
    block = torch.where(now, choice, redraft)
    ended = (block == eot) & answer & now
    after = positions > torch.where(ended, positions, size).amin(1, keepdim=True)
    exact = (first == size) | ended.any(1)
    kind = torch.where((positions < first[:, None]) & ~after, ACCEPTED, CORRECTED)
    return block.masked_fill(after, eot), now | after, (now & ~verified).sum(1), exact, ~ended.any(1), kind


def _redrafts(decoder, hidden, block, first: torch.Tensor, copy: torch.Tensor, copies: int) -> torch.Tensor:
    """(k, B): for each row, the greedy tokens after `first` of its noisy copy number `copy` (k,) (its predicting
    states: the copy's own); where there is no such copy, `block` up to `first` and masks after it, to be drafted
    again."""
    size, positions = decoder.size, torch.arange(decoder.size, device=block.device)
    has = (copy < copies) & (first <= size - 2)  # a copy exists where 0 <= copy < copies
    out = block.masked_fill((positions > first[:, None]) & ~has[:, None], decoder.tokens.mask)  # no copy: redraft
    if not bool(has.any()):
        return out
    start = (1 + copy[has]) * size  # the copy's first column
    columns = start[:, None] + torch.arange(size - 1, device=block.device)  # states of positions 0 .. B-2
    states = hidden[has][torch.arange(int(has.sum()))[:, None], columns]  # (h, B-1, H): predict positions 1 .. B-1
    states = torch.cat([states[:, :1], states], dim=1)  # position 0 is never redrafted (always kept)
    where = positions > first[has][:, None]
    out[has] = torch.where(where, greedy(decoder, states, where), block[has])
    return out
