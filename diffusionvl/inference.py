"""Answering prompts with a saved model, the one path `generate`, `chat`, `demo` and `eval` share.

A folder (or shipped name such as "minivl-dvlm") holds either a DiffusionVL (block decoding by the engine) or a
plain autoregressive checkpoint (transformers' greedy `generate` with its KV cache), so a dVLM and its AR source
are run, timed and counted the same way.
"""

import time
from dataclasses import dataclass, field

import torch

from .checkpoints.folders import is_autoregressive_folder, resolve_model
from .decoding.config import DecodingConfig
from .errors import CheckpointLayoutError, DiffusionVLError
from .loading import load_any, load_model, load_processor
from .modeling.backbones import TextBackbone
from .modeling.tokens import END_OF_TURN_TOKENS

END_OF_TURN = END_OF_TURN_TOKENS[0]  # Qwen's <|im_end|>: how an AR source (chat-trained) ends its answer


@dataclass
class Answers:
    """One batch's answers. rows: new token ids per prompt, each end-of-turn included; nfe: model forwards;
    row_forwards: forwards summed over the rows that took part in them (tokens / row_forwards is the tokens per
    forward of one row, whatever the batch size); prefill_forwards: those of them that only read the prompt
    (block decoding's prefill; an AR prefill already yields the first token, so it counts as decoding);
    seconds: wall time of decoding; accepted: speculative decoding, the tokens each verification decided."""

    texts: list[str]
    rows: list[list[int]]
    nfe: int
    row_forwards: int
    seconds: float
    prefill_forwards: int = 0
    accepted: list[int] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(len(row) for row in self.rows)

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / max(self.row_forwards, 1)

    @property
    def tokens_per_decoding_forward(self) -> float:
        """Tokens per forward after the prompt is read: what a decoding policy controls."""
        return self.tokens / max(self.row_forwards - self.prefill_forwards, 1)


def is_autoregressive(model) -> bool:
    """A plain transformers model rather than a DiffusionVL."""
    from .model import DiffusionVL

    return not isinstance(model, DiffusionVL)


def has_causal_mode(context_attention: str, logit_shift: bool) -> bool:
    """Whether a translation with these settings has a causal mode (see `causal_model`)."""
    return context_attention == "causal" and bool(logit_shift)


def can_speculate(config, with_verifier: bool) -> bool:
    """Whether a translation with this config decodes speculatively: verified by its own causal mode, or, with a
    separate verifier, as any translation with logit shift (decoding/speculative.py)."""
    return has_causal_mode(config.context_attention, config.logit_shift) or (with_verifier and config.logit_shift)


def causal_model(model):
    """The model's own causal mode, as a plain transformers model to decode with `answer` (its `generate` and KV
    cache): for a causal-context translation with logit shift, the wrapped base *is* that mode. Its clean
    stream attends token-causally and the state before each token predicts it, which is decoding in blocks of
    one. The mask (and pad, when it is a token of its own) are suppressed, as the block decoder never writes them.
    A block-causal model has no such mode: its clean states see later tokens of their own block."""
    config = model.config
    if not has_causal_mode(config.context_attention, config.logit_shift):
        raise DiffusionVLError(
            "only a model translated with context_attention='causal' and logit_shift has a causal mode (its clean "
            f"stream is then a causal LM); this one has context_attention={config.context_attention!r} and "
            f"logit_shift={config.logit_shift}. Decode it with the block decoder instead.")
    if type(model.backbone) is not TextBackbone:
        raise DiffusionVLError("the causal mode of a vision-language model is not supported yet (its generate places "
                               "image and rope positions its own way); decode it with the block decoder instead.")
    model.noisy_gate()  # draft-only adapters: off outside a noisy forward, so the base is the source itself
    base = model.model
    base.generation_config.suppress_tokens = list(model.special_tokens.never_generated)
    return base


def open_processor(path):
    """The processor (or tokenizer) of a DiffusionVL or autoregressive checkpoint; cheap, so inputs can be
    checked before any weight is read."""
    path = resolve_model(path)
    return load_processor(path, autoregressive=is_autoregressive_folder(path))


def open_model(path, dtype=None, device=None, autoregressive: bool = True):
    """The model of a DiffusionVL or (when `autoregressive`) an autoregressive checkpoint, in eval mode. With
    autoregressive=False an AR folder is refused with the pointer to `diffusionvl convert`."""
    return (load_any if autoregressive else load_model)(path, dtype=dtype, device=device).eval()


def load(path, dtype=None, device=None):
    """(model, processor) of a DiffusionVL or an autoregressive checkpoint, the model in eval mode."""
    return open_model(path, dtype, device), open_processor(path)


def end_of_turn(tokenizer) -> int:
    """The id that ends an answer: <|im_end|> where the tokenizer has it, else its eos token."""
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if eot is None or eot == tokenizer.unk_token_id:
        eot = tokenizer.eos_token_id
    if eot is None:
        raise CheckpointLayoutError(f"the tokenizer has neither {END_OF_TURN} nor an eos token to end an answer.")
    return eot


def answer(model, processor, inputs: dict, config: DecodingConfig, streamer=None, generator=None,
           verifier=None) -> Answers:
    """Greedy (or sampled, per `config`) answers to one batch of processor outputs (left-padded). `verifier`: an
    autoregressive model that checks speculative drafts (DiffusionVL.generate)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    if verifier is not None and is_autoregressive(model):
        raise DiffusionVLError("a verifier checks a block-diffusion model's speculative drafts, and this model is "
                               "autoregressive; decode it alone, or pass the translation as the model.")
    device = next(model.parameters()).device
    inputs = {key: value.to(device) for key, value in inputs.items()}
    start = time.perf_counter()
    with torch.inference_mode():
        if is_autoregressive(model):
            eot = end_of_turn(tokenizer)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot
            sampled = config.temperature > 0
            out = model.generate(**inputs, max_new_tokens=config.max_new_tokens, do_sample=sampled,
                                 temperature=config.temperature if sampled else None, top_k=config.top_k,
                                 top_p=config.top_p, eos_token_id=eot, pad_token_id=pad, streamer=streamer)
            new = out[:, inputs["input_ids"].shape[1]:].tolist()
            rows = [row[: row.index(eot) + 1] if eot in row else row for row in new]
            nfe = len(new[0])  # the prefill gives the first token, each further position one forward
            row_forwards, prefill = sum(len(row) for row in rows), 0  # a row takes part until its end-of-turn
        else:
            out = model.generate(**inputs, generation_config=config, return_dict_in_generate=True, streamer=streamer,
                                 tokenizer=tokenizer, generator=generator, verifier=verifier)
            rows = out.rows
            nfe, row_forwards, prefill = out.nfe, out.row_forwards, out.prefill_forwards
            accepted = [count for row in out.accepted for count in row]
    seconds = time.perf_counter() - start
    return Answers(texts_of(tokenizer, rows), rows, int(nfe), int(row_forwards), seconds, int(prefill),
                   accepted if not is_autoregressive(model) else [])


def texts_of(tokenizer, rows: list[list[int]]) -> list[str]:
    """The answers' texts: special tokens (end-of-turn) left out, surrounding whitespace stripped."""
    return [text.strip() for text in tokenizer.batch_decode(rows, skip_special_tokens=True)]


def chat_inputs(processor, prompts: list, images: list[list] | None = None) -> dict:
    """Processor outputs for a batch of chats, left-padded. Each prompt is one user message (a str) or a whole
    conversation ({"role", "content": str} messages ending with a user turn); images[i] go in front of the text
    of prompt i's last message. A bare tokenizer (a text model) renders its own chat template."""
    images = images or [[] for _ in prompts]
    chats = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]
    if not hasattr(processor, "chat_text"):
        if any(images):
            raise CheckpointLayoutError("this model has no image processor, so it takes no images; pass text only.")
        texts = [processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]
        return dict(processor(texts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt"))
    for chat, imgs in zip(chats, images):
        chat[-1] = {"role": chat[-1]["role"], "content": [{"type": "image"}] * len(imgs)
                    + [{"type": "text", "text": chat[-1]["content"]}]}
    texts = [processor.chat_text(chat, add_generation_prompt=True) for chat in chats]
    flat = [image for imgs in images for image in imgs]
    return dict(processor(texts, flat or None, padding_side="left"))


def conversation_inputs(processor, messages: list[dict], images: list | None = None) -> dict:
    """Processor outputs for one conversation ending with a user turn, ready for the reply. A message's content is a
    str or a list of {"type": "image"} / {"type": "text", "text"} parts; `images` fill the image parts in order.
    A bare tokenizer (a text model) renders its own chat template and takes no image."""
    if hasattr(processor, "chat_text"):
        return dict(processor(processor.chat_text(messages, add_generation_prompt=True), images or None))
    if images:
        raise CheckpointLayoutError("this model has no image processor, so it takes no images; pass text only.")
    flat = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str)
             else "".join(part.get("text", "") for part in m["content"])} for m in messages]
    text = processor.apply_chat_template(flat, tokenize=False, add_generation_prompt=True)
    return {"input_ids": processor(text, return_tensors="pt", add_special_tokens=False).input_ids}
