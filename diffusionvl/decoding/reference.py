"""The reference decoder: plain and slow. One row at a time, no cache, no padding, and every step
recomputes the whole sequence with the model's own forward, so with the attention kernel chosen when the model
was wrapped or loaded (attention.py: `sdpa_shared_kv` for an `sdpa` model), the one the engine runs.
The fast engine must produce the same tokens at temperature 0; rows end by the same rule (rows.end_of_row)."""

import torch

from .outputs import DecodingOutput, StopStrings
from .policies import StepContext, commit_step, settle_after_end, static_schedule, step_quota
from .rows import Row
from .sampling import generator_on, propose, propose_masked
from .speculative import check_self_verifier, check_verifier, copies_of


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


def reference_speculative_row(model, prompt: torch.Tensor, config, tokenizer=None, vision=None,
                              verifier=None) -> Row:
    """Speculative decoding of one prompt (speculative.py), each model call over the whole sequence: a draft (the
    block denoised, every mask filled greedily at once) where the block holds masks; then verify steps (the block
    clean, the next one as masks), each with the redraft of the block's positions after a corrected one. The engine
    runs a verify step and its redraft in one forward, and so does the count here. A separate `verifier` reads
    the block's clean rows in a forward of its own (counted), and it alone decides every checked token, a first
    block's first position included. Returns the row's record."""
    tokens, size = model.special_tokens, model.block_size
    copies = copies_of(config, size)
    row = Row(0, config.max_new_tokens, StopStrings(config.stop_strings, tokenizer) if config.stop_strings else None)
    images = {} if vision is None else vision.as_kwargs()

    def run(ids: list[int], by=model) -> torch.Tensor:  # logits (L, V) with the last block noisy
        return by(input_ids=torch.tensor([ids], device=prompt.device), denoising=True, **images).logits[0]

    sequence = prompt.tolist()
    start = len(sequence) // size * size
    block = sequence[start:] + [tokens.mask] * (start + size - len(sequence))
    answer = [index >= len(sequence) - start for index in range(size)]
    while not row.finished:
        verified, used, settled = [not new for new in answer], 0, False
        verified[0] = verified[0] or block[0] != tokens.mask  # the bonus of the last block
        while not settled:
            if any(t == tokens.mask and not v for t, v in zip(block, verified)):
                logits, used = run(sequence[:start] + block), used + 1
                if verifier is None:  # drafted from the clean state before it: the causal mode's own choice
                    verified[0] = verified[0] or block[0] == tokens.mask
                block = [_greedy(logits[start + i], tokens) if t == tokens.mask else t for i, t in enumerate(block)]
            masks = [tokens.mask] * size
            if verifier is None:  # one forward: the clean rows verify, a copy redrafts, the masks draft what follows
                logits = checks = run(sequence[:start] + block + masks)[start:]
                kept, used = sum(verified), used + 1
            else:  # the verifier's clean rows first (its masks are never read); the drafter's forward on what it
                checks, used = run(sequence[:start] + block + masks, verifier)[start:], used + 1  # decided
            choice = [t if verified[i] else _greedy(checks[i], tokens) for i, t in enumerate(block)]
            first = next((i for i in range(size) if choice[i] != block[i]), size)
            decided = sum(1 for i in range(size) if i <= first and not verified[i])
            ended = any(choice[i] == tokens.eot and answer[i] and (verified[i] or i <= first) for i in range(size))
            if verifier is not None and not ended:  # its copy keeps the correction too
                corrected = choice[: first + 1] + block[first + 1 :]
                logits, used = run(sequence[:start] + corrected + masks)[start:], used + 1
                kept = first + 1
            if first <= size - 2 and not ended and first - kept + (verifier is not None) < copies:  # redrafted by
                redraft = run(sequence[:start] + choice[:kept] + [tokens.mask] * (size - kept))[start:]  # its copy
                choice[first + 1 :] = [_greedy(redraft[i], tokens) for i in range(first + 1, size)]
            elif first <= size - 2:  # no copy kept these positions: they are drafted again, by a forward of its own
                choice[first + 1 :] = [tokens.mask] * (size - first - 1)
            block, verified = choice, [v or i <= first for i, v in enumerate(verified)]
            ends = [i for i in range(size) if block[i] == tokens.eot and answer[i] and verified[i]]
            if ends:  # decided: end-of-turn to the block's end
                block, verified = block[: ends[0] + 1] + [tokens.eot] * (size - ends[0] - 1), [True] * size
            settled = all(verified) and (first == size or bool(ends))
            if decided or (settled and not ends):
                row.accepted.append(decided + int(settled and not ends))
        row.forwards += used
        row.block_steps.append(used)
        row.extend([t for t, new in zip(block, answer) if new], tokens.eot)
        sequence, start, answer = sequence[:start] + block, start + size, [True] * size
        if not row.finished:  # the bonus (the verifier's), then the drafter's masks
            block = [_greedy((checks if i == 0 else logits)[size + i], tokens) for i in range(size)]
    return row


def reference_causal_decode(model, ids, valid, vision, max_new_tokens: int) -> DecodingOutput:
    """The model's own causal mode (causal context with logit shift: its clean stream is a causal LM), greedy, one
    token per forward over the whole sequence, each row alone with its own images: what speculative decoding must
    write, token for token. For text models transformers' `generate` of `inference.causal_model` is the fast way."""
    check_self_verifier(model)
    tokens, rows = model.special_tokens, []
    for row_ids, keep, image in zip(ids, valid, model.backbone.split_rows(ids, vision)):
        images = {} if image is None else image.as_kwargs()
        sequence, row = row_ids[keep].tolist(), Row(0, max_new_tokens)
        while not row.finished:  # a trailing mask: under logit shift the last clean state predicts at the next index
            canvas = torch.tensor([sequence + [tokens.mask]], device=ids.device)
            logits = model(input_ids=canvas, **images).logits[0, -1]
            token = int(propose(logits.clone(), tokens.never_generated, 0.0)[0])
            row.forwards += 1
            sequence.append(token)
            row.extend([token], tokens.eot)
        rows.append(row)
    return DecodingOutput.from_records(rows, sum(row.forwards for row in rows), tokens.pad, ids.device)


def _greedy(logits: torch.Tensor, tokens) -> int:
    """The greedy token of one position's logits (V,), by the engine's own rule (sampling.propose)."""
    return int(propose(logits.clone(), tokens.never_generated, 0.0)[0])


def reference_decode(model, ids, valid, vision, config, tokenizer=None, generator=None,
                     verifier=None) -> DecodingOutput:
    """Decode every row alone: its unpadded prompt and its own images. ids, valid: (N, L), as prompts.check_inputs
    returns them. `verifier`: a separate verifier of speculative drafts (speculative.check_verifier)."""
    images = model.backbone.split_rows(ids, vision)
    generator = generator_on(ids.device, generator)
    if config.speculative:
        if verifier is None:
            check_self_verifier(model)
        else:
            check_verifier(model, verifier, config)
        rows = [reference_speculative_row(model, row[keep], config, tokenizer, image, verifier)
                for row, keep, image in zip(ids, valid, images)]
    else:
        rows = [reference_decode_row(model, row[keep], config, tokenizer, generator, image)
                for row, keep, image in zip(ids, valid, images)]
    return DecodingOutput.from_records(rows, sum(row.forwards for row in rows), model.special_tokens.pad, ids.device)
