"""What a decoder returns (`DecodingOutput`), and the stop-string check every decoder shares (`StopStrings`)."""

from dataclasses import dataclass, field

import torch

from ..errors import DiffusionVLError


@dataclass
class DecodingOutput:
    """sequences (N, T): new tokens only, pad after the end. nfe: model forwards. row_forwards: forwards summed
    over the rows that took part in them. tokens_per_forward: new tokens per row forward (independent of the
    batch size). block_steps: per row, the denoising steps of each of its blocks. prefill_forwards: the row
    forwards that only read the prompt (its complete blocks), included in row_forwards. finish_reasons: per row,
    why it ended (rows.FINISH_REASONS); empty for the baselines, which do not say. accepted: speculative
    decoding, per row the tokens each verification decided (`mean_accepted` averages them). lengths: per row, its
    new tokens before the pad (where pad and end-of-turn are one id, the pad alone cannot tell a row cut by a stop
    string or the length limit from one that ended its turn)."""

    sequences: torch.Tensor
    nfe: int
    tokens_per_forward: float
    block_steps: list[list[int]]
    row_forwards: int
    prefill_forwards: int = 0
    finish_reasons: list[str] = field(default_factory=list)
    accepted: list[list[int]] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    @property
    def rows(self) -> list[list[int]]:
        """Each row's new tokens, end-of-turn included, without the pad after them."""
        return [row[:length] for row, length in zip(self.sequences.tolist(), self.lengths)]

    @property
    def mean_accepted(self) -> float | None:
        """Tokens per verification (accepted drafts and the correction), over every row; None if none ran."""
        counts = [count for row in self.accepted for count in row]
        return sum(counts) / len(counts) if counts else None

    @classmethod
    def from_records(cls, records, nfe: int, pad: int, device, prefill_forwards: int = 0):
        """Pack finished `rows.Row` records, in order, into tensors on `device`."""
        output = cls.from_rows([row.tokens for row in records], nfe, pad, device, [row.block_steps for row in records],
                               sum(row.forwards for row in records), prefill_forwards)
        output.finish_reasons = [row.finish_reason for row in records]
        output.accepted = [list(row.accepted) for row in records]
        return output

    @classmethod
    def from_rows(cls, rows: list[list[int]], nfe: int, pad: int, device, block_steps=None, row_forwards=None,
                  prefill_forwards: int = 0):
        """Pack per-row outputs on `device` (the prompts'), pad after each row's end. `row_forwards`: forwards
        summed over rows (default nfe)."""
        sequences = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long, device=device)
        for index, row in enumerate(rows):
            sequences[index, : len(row)] = torch.tensor(row, dtype=torch.long, device=device)
        row_forwards = int(row_forwards if row_forwards is not None else nfe)
        per_forward = sum(len(r) for r in rows) / max(row_forwards, 1)
        return cls(sequences, nfe, per_forward, block_steps if block_steps is not None else [[] for _ in rows],
                   row_forwards, prefill_forwards, lengths=[len(r) for r in rows])


class StopStrings:
    """Ends a row at the first stop string in its text, looking only at text the newest tokens can touch.

    Definition (what `cut` computes): the row is cut after the shortest token prefix whose decoded text holds a
    stop string. Checking the whole text after every block costs O(T) per block, O(T^2) per answer; but a match
    that a block creates must end inside the block's own tokens (an earlier one was found earlier), so only the
    block's tokens and a look-back of `longest` tokens before them are decoded (each token decodes to at least
    one character; `LOOK_BACK_SLACK` more absorbs byte-level tokens that complete one character together).
    """

    LOOK_BACK_SLACK = 4

    def __init__(self, stop_strings: tuple[str, ...], tokenizer):
        if tokenizer is None:
            raise DiffusionVLError("stop_strings need the tokenizer: pass generate(..., tokenizer=tokenizer).")
        self.stops, self.tokenizer = tuple(stop_strings), tokenizer
        self.look_back = max(len(s) for s in self.stops) + self.LOOK_BACK_SLACK

    def _holds(self, ids: list[int]) -> bool:
        text = self.tokenizer.decode(ids)
        return any(s in text for s in self.stops)

    def cut(self, out: list[int], new: int) -> bool:
        """`out` just grew by its last `new` tokens: truncate it after the first stop string; True if found."""
        first_new = len(out) - new
        start = max(0, first_new - self.look_back)
        if not self._holds(out[start:]):
            return False
        for end in range(first_new + 1, len(out) + 1):  # no match ends before the new tokens
            if self._holds(out[start:end]):
                del out[end:]
                return True
        return False
