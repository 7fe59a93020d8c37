"""The training forward: the two-stream layout `[noisy ; clean]` of a noised batch through the backbone, and its
loss (SPEC §2.4-2.5).

One pass is the reference. When no trainable weight acts on the clean stream, as with draft-only
adapters (lora.py) whose embedding trains only the mask row, the clean stream's states need no gradient: it then
runs first without autograd, its K/V kept as a cache, and the noisy stream attends to that cache in a second
pass. Same states (the same keys and values, summed in another order), and backward walks the noisy stream
alone: with the cheap layout that is about a third of the columns.
"""

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.utils import ModelOutput

from .loss import diffusion_loss
from .noise import IGNORE, NoisyBatch, two_stream_layout
from .objective import source_terms


@dataclass
class DiffusionOutput(ModelOutput):
    """Training output. `noise_level` is the mean t over supervised blocks, `num_masked` the masked positions."""

    loss: torch.Tensor | None = None
    noise_level: torch.Tensor | None = None
    num_masked: torch.Tensor | None = None


def two_stream_loss(model, batch: NoisyBatch, vision, cheap: bool, objective=None,
                    clean_first: bool | None = None) -> DiffusionOutput:
    """The block-diffusion loss of a DiffusionVL `model` on a noised batch, plus the `objective`'s terms that keep
    the source (objective.source_terms). `cheap`: only supervised blocks in the noisy stream. `clean_first`: run
    a frozen clean stream first, without autograd (None: whenever it is frozen; False: one pass, the reference)."""
    layout = two_stream_layout(batch, cheap, model.dtype, model.config.context_attention == "causal")
    noisy_pos = layout.noisy_positions
    embeds, rope = _inputs(model, batch, vision, noisy_pos)
    hidden = decode_streams(model, embeds, layout.attention_mask, rope, noisy_pos.shape[1], clean_first)
    take = batch.masked.gather(1, noisy_pos) & layout.noisy_valid  # (N, Ln)
    source = predicting_columns(noisy_pos, model.block_size, model.config.logit_shift)[take]  # (M,)
    rows = torch.arange(take.shape[0], device=take.device)[:, None].expand_as(take)[take]
    logits = model.backbone.head(hidden[rows, source])  # (M, V): only masked positions reach the head
    targets = batch.clean_ids.gather(1, noisy_pos)[take]
    t = batch.noise_level.gather(1, noisy_pos)[take]
    num_supervised = (batch.labels != IGNORE).sum(1)
    loss = diffusion_loss(logits, targets, t, rows, num_supervised, model.config.loss_average)
    if logits.shape[0] == 0:  # nothing masked this draw: keep every weight in the graph for DDP
        loss = loss + 0.0 * model.backbone.head(hidden[:, :1]).sum()
    if objective is not None and objective.extra:
        clean_hidden = hidden[:, noisy_pos.shape[1]:]  # (N, L, H): the clean stream
        loss = loss + source_terms(model, objective, batch, vision, clean_hidden, logits, targets,
                                   (rows, noisy_pos[take]))
    mean_t = batch.block_noise[batch.supervised_blocks].mean()
    return DiffusionOutput(loss=loss, noise_level=mean_t.detach(), num_masked=take.sum())


def _inputs(model, batch: NoisyBatch, vision, noisy_pos: torch.Tensor):
    """Embeddings (N, Ln + L, H) and rope positions (A, N, Ln + L) of `[noisy ; clean]`: a masked position of the
    noisy stream takes the mask row, every other one its clean embedding (image features spliced in)."""
    backbone = model.backbone
    clean = backbone.embed(batch.clean_ids, vision)  # (N, L, H)
    mask_row = model.get_input_embeddings().weight[model.special_tokens.mask]
    noisy = torch.where(batch.masked[..., None], mask_row, clean)
    embeds = torch.cat([noisy.gather(1, noisy_pos[..., None].expand(-1, -1, clean.shape[-1])), clean], dim=1)
    index = torch.arange(batch.clean_ids.shape[1], device=clean.device).expand_as(batch.clean_ids)
    rope = backbone.positions(batch.clean_ids, index, batch.valid, vision)  # (A, N, L)
    return embeds, torch.cat([rope.gather(2, noisy_pos[None].expand(rope.shape[0], -1, -1)), rope], dim=2)


def predicting_columns(noisy_pos: torch.Tensor, block_size: int, logit_shift: bool) -> torch.Tensor:
    """(N, Ln) column of `[noisy ; clean]` whose hidden state predicts each noisy column's token.

    Unshifted: the column itself. With logit_shift: the noisy column before it inside the same block, and for
    a block's first position the previous block's last position in the clean stream (column Ln + p - 1),
    which sees exactly what the engine's committed cache sees. Position 0 keeps its own column.
    """
    columns = torch.arange(noisy_pos.shape[1], device=noisy_pos.device).expand_as(noisy_pos)
    if not logit_shift:
        return columns
    first = noisy_pos % block_size == 0
    clean_before = noisy_pos.shape[1] + noisy_pos - 1
    return torch.where(first, torch.where(noisy_pos > 0, clean_before, columns), columns - 1)


def clean_stream_is_frozen(model) -> bool:
    """Whether the clean stream's states depend on no weight that trains: draft-only adapters (gated off on clean
    columns), and besides them only embedding rows that clean tokens never use (`model.trained_embedding_rows`,
    the mask row, whose other rows a gradient hook keeps fixed)."""
    if not torch.is_grad_enabled() or model.config.lora_scope != "noisy" or not model.config.lora:
        return False
    embedding = model.get_input_embeddings().weight
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad or "lora_" in name:
            continue
        if parameter is embedding and model.trained_embedding_rows == [model.special_tokens.mask]:
            continue
        return False
    return True


def decode_streams(model, embeds: torch.Tensor, mask: torch.Tensor, rope: torch.Tensor, noisy: int,
                   clean_first: bool | None = None) -> torch.Tensor:
    """Hidden states (N, Ln + L, H) of the layout: embeds (N, Ln + L, H) with the noisy stream's Ln columns first,
    its additive mask (N, 1, Ln + L, Ln + L) and rope positions (A, N, Ln + L)."""
    frozen = clean_stream_is_frozen(model)
    if clean_first and not frozen:
        raise ValueError("clean_first=True needs a clean stream that no training weight acts on (draft-only adapters, "
                         "nothing else training but the mask row); leave clean_first unset.")
    columns = torch.arange(embeds.shape[1], device=embeds.device)
    if not frozen or clean_first is False:
        with model.adapters_on(columns < noisy):
            return model.backbone.decode(embeds, mask, rope)
    cache, clean_columns = DynamicCache(), torch.zeros(embeds.shape[1] - noisy, dtype=torch.bool, device=embeds.device)
    with torch.no_grad(), model.adapters_on(clean_columns):  # no column noisy: the base model, as it must be
        clean = model.backbone.decode(embeds[:, noisy:], mask[:, :, noisy:, noisy:], rope[:, :, noisy:],
                                      cache, True)
    rows = mask[:, :, :noisy]  # the noisy queries' keys, reordered to the cache's layout: [clean ; noisy]
    with model.adapters_on(torch.ones(noisy, dtype=torch.bool, device=embeds.device)):
        drafts = model.backbone.decode(embeds[:, :noisy], torch.cat([rows[..., noisy:], rows[..., :noisy]], -1),
                                       rope[:, :, :noisy], cache, False)
    return torch.cat([drafts, clean], dim=1)
