"""The full-sequence (LLaDA-V style) baseline of the benchmark. (The AR baseline is `inference.answer` on the
source model: transformers' batched `generate` with its KV cache, the path every command shares.)"""

import math

import torch

from ..modeling.masks import positions_from_padding
from .outputs import DecodingOutput
from .policies import LowConfidenceStatic, StepContext, commit_step, static_schedule, step_quota
from .sampling import propose


def _rows(input_ids: torch.Tensor) -> torch.Tensor:
    """Unpadded prompts, one per row: (N, P) or (P,)."""
    return input_ids if input_ids.dim() == 2 else input_ids[None]


def _until_end(tokens: list[int], eot: int) -> list[int]:
    return tokens[: tokens.index(eot) + 1] if eot in tokens else tokens


@torch.no_grad()
def full_sequence_generate(
    model, input_ids, gen_length: int, block_length: int, steps: int, temperature: float = 0.0, vision=None
) -> DecodingOutput:
    """LLaDA-V style: a canvas of prompt + `gen_length` masks, bidirectional attention, no cache. The canvas is
    filled in semi-autoregressive blocks of `block_length`, `steps` denoising steps in total, low-confidence
    static remasking. The length is fixed; the answer is cut at the first end-of-turn afterwards. Rows (unpadded
    prompts) are decoded one at a time, each with its own images from `vision`; a prompt's embeddings (images
    spliced in) are computed once, since only the answer's tokens change from step to step."""
    tokens, backbone = model.special_tokens, model.backbone
    blocks = math.ceil(gen_length / block_length)
    per_block = max(1, steps // blocks)
    policy, rows, forwards = LowConfidenceStatic(), [], 0
    prompts = _rows(input_ids)
    for prompt, images in zip(prompts, backbone.split_rows(prompts, vision)):
        length = len(prompt) + gen_length
        canvas = torch.cat([prompt, prompt.new_full((gen_length,), tokens.mask)])[None]
        everywhere = torch.zeros(1, 1, length, length, dtype=model.dtype, device=prompt.device)  # bidirectional
        valid = torch.ones_like(canvas, dtype=torch.bool)
        rope = backbone.positions(canvas, positions_from_padding(valid), valid, images)  # (A, 1, length)
        prompt_embeds = backbone.embed(prompt[None], images)
        for block in range(blocks):
            start = len(prompt) + block * block_length
            end = min(start + block_length, length)
            masked = canvas[:, start:end] == tokens.mask
            schedule = static_schedule(end - start, per_block)  # every position of a canvas block starts masked
            for step in range(per_block):
                if not bool(masked.any()):
                    break
                embeds = torch.cat([prompt_embeds, model.get_input_embeddings()(canvas[:, len(prompt):])], dim=1)
                hidden = backbone.decode(embeds, everywhere, rope)
                logits = backbone.head(model.to_token_positions(hidden)[:, start:end])
                forwards += 1
                token, confidence = propose(logits, tokens.never_generated, temperature)
                context = StepContext(step, per_block, step_quota(schedule, step, masked))
                canvas[:, start:end], masked = commit_step(policy, token, confidence, canvas[:, start:end], masked, context)
        rows.append(_until_end(canvas[0, len(prompt) :].tolist(), tokens.eot))
    return DecodingOutput.from_rows(rows, forwards, tokens.pad, input_ids.device)
