"""Settings of block decoding, one frozen dataclass validated on construction."""

from dataclasses import dataclass, field, fields

from .policies import UnmaskingPolicy, resolve_policy


@dataclass(frozen=True)
class DecodingConfig:
    """How `DiffusionVL.generate` decodes.

    max_new_tokens: the only length limit; generation also stops at end-of-turn. Alias: gen_length.
    steps: denoising steps per block. More steps than the block size are clamped to the block size, since a
        step that commits nothing for any row would be a wasted forward.
    remasking_strategy: "low_confidence_static" (B tokens over `steps` steps), "low_confidence_dynamic"
        (every token above the threshold, the static quota as a floor), "threshold" (every token above the
        threshold, at least one, `steps` a cap), or any object with a `select` method (see policies.py).
    confidence_threshold: the threshold of the dynamic policies.
    temperature, top_k, top_p: sampling; temperature 0 is greedy.
    stop_strings: text that ends a row once it appears in a committed block (needs `tokenizer=`).
    use_cache: False runs the reference decoder: no cache, everything recomputed each step.
    commit: "fused" stores a finished block's K/V during the next block's first forward; "separate" spends an
        extra forward per block on it (for comparison; same tokens).
    """

    max_new_tokens: int = 128
    steps: int = 8
    remasking_strategy: str | UnmaskingPolicy = "low_confidence_static"
    confidence_threshold: float = 0.9
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    stop_strings: tuple[str, ...] = field(default_factory=tuple)
    use_cache: bool = True
    commit: str = "fused"

    def __post_init__(self):
        _positive_int("max_new_tokens", self.max_new_tokens)
        _positive_int("steps", self.steps)
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}.")
        if self.top_k is not None:
            _positive_int("top_k", self.top_k)
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}; 1 keeps every token.")
        if not 0 <= self.confidence_threshold <= 1:
            raise ValueError(f"confidence_threshold must lie in [0, 1], got {self.confidence_threshold}.")
        if self.commit not in ("fused", "separate"):
            raise ValueError(f"commit must be 'fused' or 'separate', got {self.commit!r}.")
        if isinstance(self.stop_strings, str):
            object.__setattr__(self, "stop_strings", (self.stop_strings,))
        resolve_policy(self.remasking_strategy, self.confidence_threshold)

    @property
    def policy(self) -> UnmaskingPolicy:
        return resolve_policy(self.remasking_strategy, self.confidence_threshold)

    @classmethod
    def from_options(cls, base: "DecodingConfig | None" = None, **options) -> "DecodingConfig":
        """`base` with `options` replaced; `gen_length` is an alias of `max_new_tokens`. Unknown names fail."""
        if "gen_length" in options:
            options["max_new_tokens"] = options.pop("gen_length")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown generation option(s) {unknown}; valid ones are {sorted(known)}.")
        values = {f.name: getattr(base, f.name) for f in fields(cls)} if base is not None else {}
        values.update({k: v for k, v in options.items() if v is not None})
        return cls(**values)


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
