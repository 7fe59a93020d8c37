"""A decode's rows: one record per row (`Row`), the one rule that ends a row (`end_of_row`), and the active rows
of the engine kept in batch order with their tensors (`Batch`)."""

from dataclasses import dataclass, field

import torch

from .outputs import StopStrings

# Why a row ended: its end-of-turn token ("stop"), max_new_tokens ("length"), one of its stop strings
# ("stop_string"), or its caller asked it to leave ("cancelled").
FINISH_REASONS = ("stop", "length", "stop_string", "cancelled")


def end_of_row(tokens: list[int], new: list[int], eot: int, limit: int, stops: StopStrings | None) -> str | None:
    """Append a block's `new` tokens to `tokens` and cut them where the row ends; returns why it ended, or None.

    End-of-turn is kept and ends the row; `limit` tokens end it; then a stop string inside the kept new tokens
    ends it earlier still (the cut is after the token that completes it). Every decoder applies this rule."""
    before = len(tokens)
    tokens.extend(new)
    reason = None
    if eot in new:
        del tokens[tokens.index(eot, before) + 1 :]
        reason = "stop"
    if len(tokens) > limit or (len(tokens) == limit and reason is None):
        del tokens[limit:]
        reason = "length"
    if stops is not None and len(tokens) > before and stops.cut(tokens, len(tokens) - before):
        reason = "stop_string"
    return reason


@dataclass(eq=False)
class Row:
    """One row of a decode: what it may produce and what it has produced so far.

    id: its number in admission order. tokens: the new tokens kept so far. block_steps: the denoising steps each
    of its blocks took. forwards: the model forwards it took part in (its prompt's prefill included).
    accepted: speculative decoding only, the tokens each verification decided (accepted drafts and the
    correction). finish_reason: one of FINISH_REASONS once the row has ended, set once by the decoder."""

    id: int
    max_new_tokens: int
    stops: StopStrings | None = None
    tokens: list[int] = field(default_factory=list)
    block_steps: list[int] = field(default_factory=list)
    forwards: int = 0
    accepted: list[int] = field(default_factory=list)
    cancel_requested: bool = False
    finish_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def would_keep(self, new: list[int], eot: int) -> list[int]:
        """What `extend` would keep of `new` (a prefix of it), recording nothing: the row-end rule cuts a prefix
        of a block's tokens the same way as the whole block, so these are final once `new` is."""
        tokens = list(self.tokens)
        end_of_row(tokens, new, eot, self.max_new_tokens, self.stops)
        return tokens[len(self.tokens):]

    def extend(self, new: list[int], eot: int) -> list[int]:
        """Record a finished block's new tokens; returns those kept. A cancelled row ends with this block."""
        before = len(self.tokens)
        reason = end_of_row(self.tokens, new, eot, self.max_new_tokens, self.stops)
        self.finish_reason = reason or ("cancelled" if self.cancel_requested else None)
        return self.tokens[before:]


@dataclass(eq=False)
class Batch:
    """The engine's active rows, in batch order: each row's record and its slice of every per-row tensor. The
    tensors are only ever sliced (`select`) or joined (`joined`) together, so they cannot drift apart.

    The first block of a row may hold its prompt's last tokens: `fixed` marks them, with their embeddings (images
    included) and rope positions, which come from the prompt rather than from re-embedding ids. All three are None
    once no row's current block is its first."""

    rows: list[Row]
    offsets: torch.Tensor  # (n,) each row's first column: the left padding before its prompt
    shift: torch.Tensor  # (n,) rope position of a generated token = its column + shift
    block: torch.Tensor  # (n, B) the current block's tokens
    axes: int  # rope axes: 1, or 3 under M-RoPE
    fixed: torch.Tensor | None = None  # (n, B) True where the first block holds prompt tokens
    fixed_embeds: torch.Tensor | None = None  # (n, B, H)
    first_rope: torch.Tensor | None = None  # (A, n, B)
    carry: torch.Tensor | None = None  # (n, H) logit_shift: the state of the column before the current block
    draft: torch.Tensor | None = None  # (n, B) speculative decoding: the next block's draft (masks: none yet)

    @classmethod
    def empty(cls, block_size: int, device) -> "Batch":
        none = torch.zeros(0, dtype=torch.long, device=device)
        return cls([], none, none, none.new_zeros(0, block_size), 1)

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, index: torch.Tensor) -> "Batch":
        """The rows at `index` (k,), in that order."""
        def pick(tensor, dim=0):
            return None if tensor is None else tensor.index_select(dim, index)

        return Batch([self.rows[i] for i in index.tolist()], self.offsets[index], self.shift[index],
                     self.block[index], self.axes, pick(self.fixed), pick(self.fixed_embeds), pick(self.first_rope, 1),
                     pick(self.carry), pick(self.draft))

    def joined(self, other: "Batch") -> "Batch":
        """These rows, then `other`'s. A part that one side lacks (None) is None in the result."""
        def cat(a, b, dim=0):
            return None if a is None or b is None else torch.cat([a, b], dim)

        return Batch(self.rows + other.rows, torch.cat([self.offsets, other.offsets]),
                     torch.cat([self.shift, other.shift]), torch.cat([self.block, other.block]), other.axes,
                     cat(self.fixed, other.fixed), cat(self.fixed_embeds, other.fixed_embeds),
                     cat(self.first_rope, other.first_rope, 1), cat(self.carry, other.carry),
                     cat(self.draft, other.draft))
