"""Settings of block decoding, one frozen dataclass validated on construction."""

import math
import operator
from dataclasses import dataclass, field, fields

import torch

from ..errors import DiffusionVLError
from .policies import UnmaskingPolicy, resolve_policy

SPECULATIVE = "speculative"  # the strategy that is no unmasking policy: draft, then verify (speculative.py)


@dataclass(frozen=True)
class DecodingConfig:
    """How `DiffusionVL.generate` decodes.

    max_new_tokens: the only length limit; generation also stops at end-of-turn. Alias: gen_length.
    steps: denoising steps per block. More steps than the block size are clamped to the block size, since a
        step that commits nothing for any row would be a wasted forward.
    remasking_strategy: "low_confidence_static" (the block size B spread over `steps` steps, as the original
        does: a first block that already holds prompt tokens finishes in fewer steps), "low_confidence_dynamic"
        (every token above the threshold, the static quota as a floor), "threshold" (every token above the
        threshold, at least one, `steps` a cap), "speculative" (draft each block in parallel and keep what the
        verifier would write, greedily: lossless, see speculative.py; the verifier is the model's own causal mode,
        which needs causal context and logit shift, or an AR model passed as generate(verifier=), which needs
        logit shift; temperature 0; `steps` does not apply), or any object with a `select` method (see policies.py).
    confidence_threshold: the threshold of the dynamic policies, in [0, 1].
    temperature, top_k, top_p: sampling; temperature 0 is greedy. Integers may be NumPy or torch scalars.
    stop_strings: text that ends a row once it appears in a committed block (needs `tokenizer=`).
    use_cache: False runs the reference decoder: no cache, everything recomputed each step.
    speculative_copies: speculative decoding only: how many noisy copies of the block a verify forward carries
        (copy c keeps the verified positions and c drafts after them, the rest masks), so that a first wrong draft
        up to c places after the verified ones is redrafted inside the same forward; one further away is
        redrafted by a forward of its own. None: B - 1, every place. The tokens are the same either way; fewer
        copies make each verify forward cheaper. With a separate verifier one copy serves any rejection (it is
        made after the verification); 0 drops it. Default 1: `diffusionvl bench --tasks minivl:scene --samples 25
        --batch-sizes 1,8 --repeats 3 --no-llada --thresholds 0.9 --speculative-copies 0,1,2,all` (block 8, a
        2-core CPU; docs/bench-scene-copies.json) ran 0, 1, 2 and every copy at 2.27, 2.26, 2.18 and 1.95x AR's
        tokens/s at batch 1, and at 1.59, 1.64, 1.41 and 1.17x at batch 8.
    commit: "fused" stores a finished block's K/V during the next block's first forward, and reads the prompt
        during the first block's first forward; "separate" spends a forward of its own on the prompt and on every
        finished block (for comparison; same tokens).
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
    speculative_copies: int | None = 1

    def __post_init__(self):
        for name in ("max_new_tokens", "steps") + (("top_k",) if self.top_k is not None else ()):
            object.__setattr__(self, name, _positive_int(name, getattr(self, name)))
        temperature = _finite(self.temperature)
        if temperature is None or temperature < 0:  # inf would reach torch.multinomial as nan probabilities
            raise DiffusionVLError(f"temperature must be a finite number >= 0 (0 is greedy), got {self.temperature!r}.")
        top_p = None if self.top_p is None else _finite(self.top_p)
        if self.top_p is not None and (top_p is None or not 0 < top_p <= 1):
            raise DiffusionVLError(f"top_p must lie in (0, 1], got {self.top_p!r}; 1 keeps every token.")
        threshold = _finite(self.confidence_threshold)
        if threshold is None or not 0 <= threshold <= 1:
            raise DiffusionVLError(f"confidence_threshold must lie in [0, 1], got {self.confidence_threshold!r}.")
        for name, value in (("temperature", temperature), ("top_p", top_p), ("confidence_threshold", threshold)):
            object.__setattr__(self, name, value)
        if self.speculative_copies is not None and (isinstance(self.speculative_copies, bool) or not isinstance(
                self.speculative_copies, int) or self.speculative_copies < 0):
            raise DiffusionVLError(f"speculative_copies must be an integer >= 0 (None: one per block position), got "
                                   f"{self.speculative_copies!r}.")
        if self.commit not in ("fused", "separate"):
            raise DiffusionVLError(f"commit must be 'fused' or 'separate', got {self.commit!r}.")
        if isinstance(self.stop_strings, str):
            object.__setattr__(self, "stop_strings", (self.stop_strings,))
        if not self.speculative:
            resolve_policy(self.remasking_strategy, self.confidence_threshold)
        elif temperature > 0:
            raise DiffusionVLError(
                "speculative decoding is greedy (temperature 0): it keeps a draft only where it equals the causal "
                "mode's greedy choice, which is what makes it lossless; sampling would need the drafts' "
                "probabilities in the acceptance rule. Set temperature=0, or sample with another strategy.")

    @property
    def speculative(self) -> bool:
        return isinstance(self.remasking_strategy, str) and self.remasking_strategy == SPECULATIVE

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


def _positive_int(name: str, value) -> int:
    """`value` as a Python int: NumPy and one-element torch integers count (operator.index), bools and floats do not."""
    number = None
    if not (isinstance(value, bool) or getattr(value, "dtype", None) == torch.bool):
        try:
            number = operator.index(value)
        except TypeError:
            pass
    if number is None or number <= 0:
        raise DiffusionVLError(f"{name} must be a positive integer, got {value!r}.")
    return number


def _finite(value) -> float | None:
    """`value` as a finite float (NumPy and one-element torch numbers count); None for bools, text, nan and inf."""
    if isinstance(value, (bool, str)) or getattr(value, "dtype", None) == torch.bool:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return number if math.isfinite(number) else None
