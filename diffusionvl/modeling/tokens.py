"""Special tokens, looked up by name once and kept in one small record. No other file knows a token id."""

from dataclasses import dataclass

from ..errors import DiffusionVLError

MASK_TOKEN = "<|mask|>"
# Qwen's image placeholder; the processor expands one per merged image patch.
IMAGE_TOKEN = "<|image_pad|>"
# The released DiffusionVL-Qwen checkpoints use this unused Qwen embedding row as [MASK] (their model card).
RELEASED_MASK_TOKEN_ID = 151671
# Chat templates end an assistant turn with one of these; the first one the tokenizer knows wins.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


# What fixes an id outside the vocabulary, per token (from_autoregressive's arguments).
FIXES = {
    "mask": "pass mask_token_id= an unused row of the embedding matrix, or the tokenizer so '<|mask|>' is added.",
    "eot": "pass eot_token_id= the id of the end-of-turn token (the config's eos_token_id does not fit this model).",
    "pad": "pass pad_token_id= a row of the embedding matrix (or the end-of-turn id).",
}


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids the diffusion objective and the decoder need.

    mask: the `[MASK]` token that noisy positions hold.
    eot: end of turn; pads the last block in training and ends an answer in generation.
    pad: fills padding positions. May equal `eot` for tokenizers without a pad token.
    vocab_size: rows of the embedding matrix; every id must lie below it.
    """

    mask: int
    eot: int
    pad: int
    vocab_size: int

    def __post_init__(self):
        for name, fix in FIXES.items():
            token_id = getattr(self, name)
            if not 0 <= token_id < self.vocab_size:
                raise DiffusionVLError(
                    f"{name} token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1}); {fix}")
        if self.mask in (self.eot, self.pad):
            raise DiffusionVLError(
                f"the mask token ({self.mask}) must differ from end-of-turn ({self.eot}) and pad ({self.pad}); "
                f"pick an unused vocabulary row as mask_token_id."
            )

    @property
    def never_generated(self) -> tuple[int, ...]:
        """Ids the decoder must never produce: the mask, and pad when it is a token of its own."""
        return (self.mask,) if self.pad == self.eot else (self.mask, self.pad)


def known_id(tokenizer, token: str) -> int | None:
    """The id of `token` if the tokenizer has it as a single token, else None."""
    if tokenizer is None or token not in tokenizer.get_vocab():
        return None
    return tokenizer.convert_tokens_to_ids(token)


def _first_id(value) -> int | None:
    return value[0] if isinstance(value, (list, tuple)) and value else value


def resolve_mask_token(model, tokenizer, mask_token_id: int | None) -> int:
    """Find or create the mask token. Adds `<|mask|>` to the tokenizer (resizing embeddings only if needed)."""
    if mask_token_id is not None:
        return mask_token_id
    if tokenizer is None:
        raise DiffusionVLError(
            "no mask token: pass the tokenizer (a '<|mask|>' token is then added) or mask_token_id= "
            f"(an unused embedding row; the released Qwen DiffusionVL checkpoints use {RELEASED_MASK_TOKEN_ID})."
        )
    found = known_id(tokenizer, MASK_TOKEN)
    if found is None:
        tokenizer.add_special_tokens({"additional_special_tokens": [MASK_TOKEN]}, replace_extra_special_tokens=False)
        found = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    rows = model.get_input_embeddings().weight.shape[0]
    if found >= rows:
        model.resize_token_embeddings(found + 1)
    return found


def resolve_eot_token(model, tokenizer) -> int:
    """End of turn: a chat end-of-turn token by name, else the tokenizer's or the model's EOS."""
    for name in END_OF_TURN_TOKENS:
        if (found := known_id(tokenizer, name)) is not None:
            return found
    config = model.config
    candidates = [
        getattr(tokenizer, "eos_token_id", None),
        _first_id(getattr(getattr(model, "generation_config", None), "eos_token_id", None)),
        _first_id(getattr(config, "eos_token_id", None)),
        _first_id(getattr(getattr(config, "text_config", None), "eos_token_id", None)),
    ]
    for candidate in candidates:
        if candidate is not None:
            return candidate
    raise DiffusionVLError("no end-of-turn token found: the tokenizer and config name no EOS; pass eot_token_id= "
                           "(e.g. DiffusionVL.from_autoregressive(model, eot_token_id=...)).")


def resolve_pad_token(model, tokenizer, eot: int) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    for config in (model.config, getattr(model.config, "text_config", None)):
        if pad is None:
            pad = getattr(config, "pad_token_id", None)
    return eot if pad is None else pad
