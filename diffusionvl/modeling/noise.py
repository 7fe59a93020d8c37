"""The forward (noising) process of block diffusion and the two-stream training layout (SPEC §2).

Shapes: N samples, L positions (a multiple of the block size B after `align_to_blocks`), nb = L // B blocks.
"""

from dataclasses import dataclass

import torch

from .masks import CLEAN, NOISY, block_diffusion_rule, to_attention_mask

IGNORE = -100


def _rand(shape, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    # Draw on the generator's device so a seeded draw is the same whatever device the batch lives on.
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def align_to_blocks(input_ids, labels, attention_mask, block_size: int, eot_id: int, pad_id: int):
    """Right-align every row and end a row that holds an answer on a block boundary with supervised end-of-turn
    tokens.

    Rows may arrive left- or right-padded; real tokens must be contiguous. Unsupervised tokens after a row's last
    supervised one are dropped. Returns (ids, labels, valid), each (N, L') with L' the longest aligned row.
    Teaching the model to fill its last block with EOT is how generation learns to stop. A row without any
    supervised label (a prompt whose answer was cut away) is kept as it is and gets no EOT: it has no answer to
    end, and EOT labels there would teach the model to stop before answering.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    valid = attention_mask.bool()
    lengths = valid.sum(1)
    index = torch.arange(valid.shape[1], device=valid.device)
    span = torch.where(valid, index, -1).amax(1) - torch.where(valid, index, valid.shape[1]).amin(1) + 1
    if bool(((span != lengths) & (lengths > 0)).any()):
        raise ValueError("attention_mask has holes: each row's real tokens must be contiguous (left or right padding).")
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices  # real tokens first
    ids, labels = input_ids.gather(1, order), labels.gather(1, order)
    # A row ends at its last supervised token: what a chat template writes after the end-of-turn (Qwen's "\n")
    # is never generated, and left visible in a noisy block it would tell the model where the answer ends.
    supervised = labels != IGNORE
    answered = supervised.any(1)
    last = torch.where(supervised, index, -1).amax(1)
    lengths = torch.where(answered, torch.minimum(lengths, last + 1), lengths)
    aligned = torch.where(answered, (lengths + block_size - 1) // block_size * block_size, lengths)
    width = max(-(-int(aligned.max()) // block_size) * block_size, block_size)  # whole blocks, as the layout needs
    extra = width - ids.shape[1]
    if extra > 0:
        ids = torch.nn.functional.pad(ids, (0, extra), value=pad_id)
        labels = torch.nn.functional.pad(labels, (0, extra), value=IGNORE)
    ids, labels = ids[:, :width], labels[:, :width]
    pos = torch.arange(width, device=ids.device)[None]
    tail = (pos >= lengths[:, None]) & (pos < aligned[:, None])
    ids = torch.where(tail, eot_id, torch.where(pos < lengths[:, None], ids, pad_id))
    labels = torch.where(tail, eot_id, torch.where(pos < lengths[:, None], labels, IGNORE))
    return ids, labels, pos < aligned[:, None]


NOISE_STRATA = ("supervised_shuffled", "all_blocks_ordered")


def _unit_draws(count: int, antithetic: bool, shuffled: bool, generator, device) -> torch.Tensor:
    """`count` draws in [0, 1), (count,). Antithetic: draw k lies in stratum [s_k/count, (s_k+1)/count), with
    s a random permutation when `shuffled` and s_k = k otherwise."""
    u = _rand((count,), generator, device)
    if not antithetic or count == 0:
        return u
    if shuffled:
        gen_device = generator.device if generator is not None else device
        strata = torch.randperm(count, generator=generator, device=gen_device).to(device)
    else:
        strata = torch.arange(count, device=device)
    return (strata + u) / count


def sample_noise_levels(
    supervised_blocks: torch.Tensor,
    eps_min: float,
    eps_max: float,
    antithetic: bool,
    generator=None,
    strata: str = "supervised_shuffled",
) -> torch.Tensor:
    """One noise level t per block, (N, nb) -> (N, nb). Blocks without supervision get t = 1 (never used).

    strata "supervised_shuffled": the M supervised blocks of the batch share the draws; antithetic gives one
    draw from each stratum [k/M, (k+1)/M), handed to blocks in random order.
    strata "all_blocks_ordered" (the original DiffusionVL/BD3-LM rule): all N * nb blocks share the draws,
    row-major, and block k gets stratum k: t_k = eps_min + (eps_max - eps_min) * (k + u_k) / (N * nb). Prompt,
    image and padding blocks use up strata too, and later blocks of a row are always noisier.
    """
    if strata not in NOISE_STRATA:
        raise ValueError(f"strata must be one of {', '.join(map(repr, NOISE_STRATA))}, got {strata!r}.")
    ordered = strata == "all_blocks_ordered"
    drawn = torch.ones_like(supervised_blocks) if ordered else supervised_blocks  # (N, nb): blocks that get a draw
    device = supervised_blocks.device
    u = _unit_draws(int(drawn.sum()), antithetic, not ordered, generator, device)
    t = torch.ones(supervised_blocks.shape, device=device)
    t[drawn] = eps_min + (eps_max - eps_min) * u  # boolean indexing is row-major: block k of the batch gets u[k]
    return t.masked_fill(~supervised_blocks, 1.0)


@dataclass
class NoisyBatch:
    """A block-aligned batch with one noise draw applied. All (N, L) except `block_noise` (N, nb)."""

    clean_ids: torch.Tensor
    noisy_ids: torch.Tensor
    labels: torch.Tensor
    valid: torch.Tensor
    masked: torch.Tensor
    block_noise: torch.Tensor
    block_size: int

    @property
    def noise_level(self) -> torch.Tensor:
        """t of each position's block, (N, L)."""
        return self.block_noise.repeat_interleave(self.block_size, dim=1)

    @property
    def supervised_blocks(self) -> torch.Tensor:
        return (self.labels != IGNORE).view(self.labels.shape[0], -1, self.block_size).any(-1)


NOISE_PATTERNS = ("independent", "suffix")


def apply_noise(ids, labels, valid, block_noise, block_size: int, mask_id: int, generator=None,
                pattern: str = "independent") -> NoisyBatch:
    """Mask supervised positions of block j at noise level t_j.

    pattern "independent" (SPEC §2.2): each position is masked with probability t_j on its own. "suffix": as many
    positions as that draw masks, but always the block's last supervised ones, so the known tokens of a block are
    a prefix: the only layout a left-to-right drafter (speculative decoding) ever sees. The number masked per block
    has the same distribution either way, so the 1/t weighting of the loss still fits.
    """
    if pattern not in NOISE_PATTERNS:
        raise ValueError(f"pattern must be one of {', '.join(map(repr, NOISE_PATTERNS))}, got {pattern!r}.")
    batch = NoisyBatch(ids, ids, labels, valid, ids.new_zeros(ids.shape, dtype=torch.bool), block_noise, block_size)
    supervised = labels != IGNORE
    batch.masked = supervised & (_rand(ids.shape, generator, ids.device) < batch.noise_level)
    if pattern == "suffix":
        n = ids.shape[0]
        count = batch.masked.view(n, -1, block_size).sum(-1, keepdim=True)  # (N, nb, 1) masks per block
        blocks = supervised.view(n, -1, block_size).int()
        after = blocks.flip(-1).cumsum(-1).flip(-1) - blocks  # (N, nb, B) supervised positions after each one
        batch.masked = supervised & (after < count).view(n, -1)
    batch.noisy_ids = torch.where(batch.masked, mask_id, ids)
    return batch


@dataclass
class TwoStreamLayout:
    """The model input `[noisy ; clean]` of one batch. `index` maps every column to its sequence index (which
    defines its block); the first `noisy_positions.shape[1]` columns are the noisy stream."""

    input_ids: torch.Tensor  # (N, Ln + L)
    index: torch.Tensor  # (N, Ln + L)
    attention_mask: torch.Tensor  # (N, 1, Ln + L, Ln + L) additive
    noisy_positions: torch.Tensor  # (N, Ln)
    noisy_valid: torch.Tensor  # (N, Ln)


def two_stream_layout(batch: NoisyBatch, cheap: bool, dtype: torch.dtype, causal_context: bool = False
                      ) -> TwoStreamLayout:
    """Build the two streams. `cheap` keeps only supervised blocks in the noisy stream (SPEC §2.6).

    A dropped block is never masked, so no query reads its noisy copy and no loss term comes from it: the loss
    is the same as with the full layout for the same noise draw.
    """
    n, length = batch.clean_ids.shape
    size = batch.block_size
    kept = batch.supervised_blocks if cheap else batch.valid.view(n, -1, size).any(-1)
    order = torch.sort((~kept).to(torch.int8), dim=1, stable=True).indices  # kept blocks first, in order
    width = max(int(kept.sum(1).max()), 1)
    blocks, block_ok = order[:, :width], kept.gather(1, order[:, :width])
    noisy_pos = (blocks[:, :, None] * size + torch.arange(size, device=blocks.device)).flatten(1)  # (N, width*B)
    noisy_valid = block_ok.repeat_interleave(size, dim=1) & batch.valid.gather(1, noisy_pos)
    clean_pos = torch.arange(length, device=blocks.device).expand(n, length)
    positions = torch.cat([noisy_pos, clean_pos], dim=1)
    stream = torch.cat([torch.full_like(noisy_pos, NOISY), torch.full_like(clean_pos, CLEAN)], dim=1)
    valid = torch.cat([noisy_valid, batch.valid], dim=1)
    block = positions // size
    positions_if_causal = (positions, positions) if causal_context else ()  # the clean stream attends token-causally
    allowed = block_diffusion_rule(block, stream, block, stream, valid, *positions_if_causal)
    ids = torch.cat([batch.noisy_ids.gather(1, noisy_pos), batch.clean_ids], dim=1)
    mask = to_attention_mask(allowed, valid, dtype)
    return TwoStreamLayout(ids, positions, mask, noisy_pos, noisy_valid)
