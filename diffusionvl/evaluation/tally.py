"""What a run of batches cost: forwards, tokens and time summed over them, and the speeds they give."""

from dataclasses import dataclass, field


@dataclass
class Tally:
    """Forwards, tokens and time summed over batches of `inference.Answers`."""

    nfe: int = 0
    row_forwards: int = 0
    prefill_forwards: int = 0
    tokens: int = 0
    seconds: float = 0.0
    accepted: list[int] = field(default_factory=list)  # speculative decoding: tokens per verification

    def add(self, out, seconds: float) -> None:
        self.nfe += out.nfe
        self.row_forwards += out.row_forwards
        self.prefill_forwards += out.prefill_forwards
        self.tokens += out.tokens
        self.seconds += seconds
        self.accepted += getattr(out, "accepted", [])

    def speed(self) -> dict:
        accepted = {"mean_accepted": sum(self.accepted) / len(self.accepted)} if self.accepted else {}
        return {**accepted,
            "tokens_per_forward": self.tokens / max(self.row_forwards, 1),
            "tokens_per_decoding_forward": self.tokens / max(self.row_forwards - self.prefill_forwards, 1),
            "nfe": self.nfe,
            "tokens_per_s": self.tokens / self.seconds if self.seconds > 0 else 0.0,
            "seconds": self.seconds,
        }
