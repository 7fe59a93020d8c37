"""The reference decoder: plain and slow. One row at a time, no cache, no padding, and every step
recomputes the whole sequence. The fast engine must produce the same tokens at temperature 0."""

import torch

from .outputs import DecodingOutput, StopStrings
from .policies import StepContext, commit_step, settle_after_end
from .sampling import propose_masked


def reference_decode_row(model, prompt: torch.Tensor, config, tokenizer=None, generator=None, vision=None):
    """Decode one prompt (1-D ids, with its own images). Returns (new tokens, forwards, steps per block)."""
    tokens, size, steps = model.special_tokens, model.block_size, min(config.steps, model.block_size)
    policy = config.policy
    stops = StopStrings(config.stop_strings, tokenizer) if config.stop_strings else None
    sequence, produced, forwards, block_steps = prompt.tolist(), [], 0, []
    while True:
        start = len(sequence) // size * size  # the block that holds the next new token
        canvas = torch.tensor(sequence + [tokens.mask] * (start + size - len(sequence)), device=prompt.device)[None]
        masked = answer = canvas[:, start:] == tokens.mask  # (1, B)
        used = 0
        for step in range(steps):
            if not bool(masked.any()):
                break
            # block-causal attention; later blocks do not exist yet; images are encoded again every step
            images = {} if vision is None else vision.as_kwargs()
            logits = model(input_ids=canvas, **images).logits[:, start:]
            forwards, used = forwards + 1, used + 1
            token, confidence = propose_masked(
                logits[masked], masked, tokens.never_generated, config.temperature, config.top_k, config.top_p, generator
            )
            # the original's quota: B spread over the steps (the first B % S one more), at most the masks left
            quota = min(size // steps + (1 if step < size % steps else 0), int(masked.sum()))
            context = StepContext(step, steps, torch.tensor([quota], device=canvas.device))
            canvas[:, start:], masked = commit_step(policy, token, confidence, canvas[:, start:], masked, context)
            canvas[:, start:], masked = settle_after_end(canvas[:, start:], masked, answer, tokens.eot)
        block_steps.append(used)
        new = canvas[0, len(sequence) :].tolist()
        sequence += new
        produced += new
        if tokens.eot in produced:
            return produced[: produced.index(tokens.eot) + 1], forwards, block_steps
        if len(produced) >= config.max_new_tokens:
            return produced[: config.max_new_tokens], forwards, block_steps
        if stops is not None and stops.cut(produced, len(new)):
            return produced, forwards, block_steps


def reference_decode(model, ids, valid, vision, config, tokenizer=None, generator=None) -> DecodingOutput:
    """Decode every row alone: its unpadded prompt and its own images. ids, valid: (N, L), as prompts.check_inputs
    returns them."""
    images = model.backbone.split_rows(ids, vision)
    rows = [
        reference_decode_row(model, row[keep], config, tokenizer, generator, image)
        for row, keep, image in zip(ids, valid, images)
    ]
    return DecodingOutput.from_rows(
        [out for out, _, _ in rows], sum(f for _, f, _ in rows), model.special_tokens.pad, [s for _, _, s in rows]
    )
