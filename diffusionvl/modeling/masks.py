"""Block-diffusion attention, defined once as a rule on per-token descriptors.

Every token carries (block index, stream, valid). The training sequence is `[x_t ; x_0]` (noisy stream, then
clean stream); inference uses the clean stream alone. For a query in block j (BD3-LM's three parts):
    noisy -> noisy keys of block j            (M_BD: bidirectional inside the block)
    noisy -> clean keys of blocks < j         (M_OBC: offset block-causal)
    clean -> clean keys of blocks <= j        (M_BC: block-causal)
    clean -> noisy keys: never; invalid (padding) keys: never.
With causal context (`DiffusionVLConfig.context_attention="causal"`) the clean stream attends token-causally,
exactly as the source does: clean -> clean keys at positions <= its own. The noisy rules stay.
The same rule serves training, prefill, denoising and the fused commit, so they cannot drift apart. At inference
there is one stream: the block being denoised is the noisy one, every other column is clean.
"""

import torch

NOISY, CLEAN = 0, 1


def block_diffusion_rule(
    q_block: torch.Tensor, q_stream: torch.Tensor, k_block: torch.Tensor, k_stream: torch.Tensor, k_valid: torch.Tensor,
    q_position: torch.Tensor | None = None, k_position: torch.Tensor | None = None,
    q_segment: torch.Tensor | None = None, k_segment: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean attention pattern. Inputs (N, Q) for queries and (N, K) for keys; returns (N, Q, K), True = attend.
    With positions (causal context), a clean query sees the clean keys at positions <= its own, not its block's.
    With segments, noisy copies of one block in different segments do not see each other (speculative drafts)."""
    qb, qs = q_block[:, :, None], q_stream[:, :, None]
    kb, ks = k_block[:, None, :], k_stream[:, None, :]
    noisy_q = qs == NOISY
    same_block_noisy = noisy_q & (ks == NOISY) & (kb == qb)
    if q_segment is not None:
        same_block_noisy = same_block_noisy & (k_segment[:, None, :] == q_segment[:, :, None])
    earlier_clean = noisy_q & (ks == CLEAN) & (kb < qb)
    if q_position is None:
        clean_context = ~noisy_q & (ks == CLEAN) & (kb <= qb)
    else:
        clean_context = ~noisy_q & (ks == CLEAN) & (k_position[:, None, :] <= q_position[:, :, None])
    return (same_block_noisy | earlier_clean | clean_context) & k_valid[:, None, :]


def to_attention_mask(allowed: torch.Tensor, q_valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, Q, K) bool -> (N, 1, Q, K) additive float mask, accepted as-is by transformers' eager and SDPA paths.

    Padding queries see every key: their outputs are never read, and a row with no key would turn into NaN.
    """
    allowed = allowed | ~q_valid[:, :, None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def block_causal_mask(
    q_positions: torch.Tensor,
    q_valid: torch.Tensor,
    k_positions: torch.Tensor,
    k_valid: torch.Tensor,
    block_size: int,
    dtype: torch.dtype,
    causal_context: bool = False,
    noisy: int = 0,
    segments: torch.Tensor | None = None,
) -> torch.Tensor:
    """Single-stream mask for inference: each query sees its own block and every earlier block.

    positions are per-row absolute positions (N, Q) / (N, K); keys may include cached tokens and end with the
    queries. With `causal_context` the last `noisy` query columns are the block being denoised (bidirectional
    inside it, every earlier clean token before it) and every other column is clean, attending token-causally.
    Without it the two are the same pattern, so `noisy` changes nothing, unless `segments` (Q,) are given: noisy
    query columns with different ids do not see each other (cached keys are segment 0), and then the two streams
    are kept apart under either context (a speculative verify forward: noisy copies of a block sit on the places
    of its clean rows).
    """
    q_block, k_block = q_positions // block_size, k_positions // block_size
    q_stream = torch.full_like(q_block, CLEAN)
    k_stream = torch.full_like(k_block, CLEAN)
    if not causal_context and segments is None:
        return to_attention_mask(block_diffusion_rule(q_block, q_stream, k_block, k_stream, k_valid), q_valid, dtype)
    if noisy:
        q_stream[:, -noisy:], k_stream[:, -noisy:] = NOISY, NOISY
    q_segment = k_segment = None
    if segments is not None:
        q_segment = segments[None].expand_as(q_block)
        k_segment = torch.cat([segments.new_zeros(k_block.shape[1] - len(segments)), segments])[None].expand_as(k_block)
    token_causal = (q_positions, k_positions) if causal_context else (None, None)  # else clean sees its block
    allowed = block_diffusion_rule(q_block, q_stream, k_block, k_stream, k_valid, *token_causal, q_segment, k_segment)
    return to_attention_mask(allowed, q_valid, dtype)


def positions_from_padding(attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-row positions counted from the first real token, so left padding does not shift blocks. (N, L)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
