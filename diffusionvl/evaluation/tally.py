"""What a run of batches cost: forwards, tokens and time summed over them, and the speeds they give."""

from dataclasses import dataclass


@dataclass
class Tally:
    """Forwards, tokens and time summed over batches of `inference.Answers`."""

    nfe: int = 0
    row_forwards: int = 0
    prefill_forwards: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def add(self, out, seconds: float) -> None:
        self.nfe += out.nfe
        self.row_forwards += out.row_forwards
        self.prefill_forwards += out.prefill_forwards
        self.tokens += out.tokens
        self.seconds += seconds

    def speed(self) -> dict:
        return {
            "tokens_per_forward": self.tokens / max(self.row_forwards, 1),
            "tokens_per_decoding_forward": self.tokens / max(self.row_forwards - self.prefill_forwards, 1),
            "nfe": self.nfe,
            "tokens_per_s": self.tokens / self.seconds if self.seconds > 0 else 0.0,
            "seconds": self.seconds,
        }
