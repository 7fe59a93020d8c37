"""From logits to a candidate token and a confidence per position (SPEC §3.2)."""

import torch


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Keep the top-k tokens and the smallest set whose probability reaches top-p; the rest get -inf."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def propose(
    logits: torch.Tensor,
    never: tuple[int, ...],
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (..., V) -> (token, confidence), each (...). Ids in `never` (mask, pad) are never proposed.

    Greedy at temperature 0, confidence = softmax probability of the argmax. Otherwise a sample from the
    tempered, filtered distribution, confidence = its probability there.
    """
    logits = logits.float()
    logits[..., list(never)] = float("-inf")
    if temperature == 0:
        probs = logits.softmax(-1)
        confidence, token = probs.max(-1)
        return token, confidence
    probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
    token = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).view(probs.shape[:-1])
    return token, probs.gather(-1, token[..., None])[..., 0]


def generator_on(device, generator: torch.Generator | None) -> torch.Generator | None:
    """A generator on `device` for a decode: the user's where it lives there, else one seeded once from it, so a
    CPU seed drives a GPU model without moving a (positions x vocabulary) matrix across devices every step."""
    if generator is None or generator.device == torch.device(device):
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator(device).manual_seed(seed)


def propose_masked(
    logits: torch.Tensor,
    masked: torch.Tensor,
    never: tuple[int, ...],
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`propose` for the masked positions of a block only: logits (k, V) are theirs, in row-major order of
    masked (N, B), k = masked.sum(). Returns (token, confidence), each (N, B); an unmasked position gets token 0
    and confidence 0, which no policy may select anyway. Only masked positions need a head output, so the
    caller computes k rows of logits instead of N * B (the lm_head is a large share of a step)."""
    token, confidence = propose(logits, never, temperature, top_k, top_p, generator)
    tokens = torch.zeros(masked.shape, dtype=token.dtype, device=masked.device)
    confidences = torch.zeros(masked.shape, dtype=confidence.dtype, device=masked.device)
    return tokens.masked_scatter_(masked, token), confidences.masked_scatter_(masked, confidence)
