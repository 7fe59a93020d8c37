"""The reference decoder: plain and slow. One row at a time, no cache, no padding, and every step
recomputes the whole sequence with the model's own forward, so with the attention kernel chosen when the model
was wrapped or loaded (attention.py: `sdpa_shared_kv` for an `sdpa` model), the one the engine runs.
The fast engine must produce the same tokens at temperature 0; rows end by the same rule (rows.end_of_row)."""

import torch

from .outputs import DecodingOutput, StopStrings
from .policies import StepContext, commit_step, settle_after_end, static_schedule, step_quota
from .rows import Row
from .sampling import generator_on, propose_masked


def reference_decode_row(model, prompt: torch.Tensor, config, tokenizer=None, generator=None, vision=None) -> Row:
    """Decode one prompt (1-D ids, with its own images); returns its record (tokens, forwards, steps per block,
    finish reason)."""
    tokens, size, steps = model.special_tokens, model.block_size, min(config.steps, model.block_size)
    schedule = static_schedule(size, steps)
    row = Row(0, config.max_new_tokens, StopStrings(config.stop_strings, tokenizer) if config.stop_strings else None)
    sequence = prompt.tolist()
    while not row.finished:
        start = len(sequence) // size * size  # the block that holds the next new token
        canvas = torch.tensor(sequence + [tokens.mask] * (start + size - len(sequence)), device=prompt.device)[None]
        masked = answer = canvas[:, start:] == tokens.mask  # (1, B)
        used = 0
        for step in range(steps):
            if not bool(masked.any()):
                break
            # the model's own attention (block-causal, or causal context with this block the one being denoised);
            # later blocks do not exist yet; images are encoded again every step
            images = {} if vision is None else vision.as_kwargs()
            logits = model(input_ids=canvas, denoising=True, **images).logits[:, start:]
            used += 1
            token, confidence = propose_masked(logits[masked], masked, tokens.never_generated, config.temperature,
                                               config.top_k, config.top_p, generator)
            context = StepContext(step, steps, step_quota(schedule, step, masked))
            block, masked = commit_step(config.policy, token, confidence, canvas[:, start:], masked, context)
            canvas[:, start:], masked = settle_after_end(block, masked, answer, tokens.eot)
        row.forwards += used
        row.block_steps.append(used)
        new = canvas[0, len(sequence) :].tolist()
        sequence += new
        row.extend(new, tokens.eot)
    return row


def reference_decode(model, ids, valid, vision, config, tokenizer=None, generator=None) -> DecodingOutput:
    """Decode every row alone: its unpadded prompt and its own images. ids, valid: (N, L), as prompts.check_inputs
    returns them."""
    images = model.backbone.split_rows(ids, vision)
    generator = generator_on(ids.device, generator)
    rows = [
        reference_decode_row(model, row[keep], config, tokenizer, generator, image)
        for row, keep, image in zip(ids, valid, images)
    ]
    return DecodingOutput.from_records(rows, sum(row.forwards for row in rows), model.special_tokens.pad, ids.device)
