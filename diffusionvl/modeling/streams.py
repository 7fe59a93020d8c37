"""Running the two-stream layout `[noisy ; clean]` of a training step through the backbone.

One pass is the reference (SPEC §2.4). When no trainable weight acts on the clean stream, as with draft-only
adapters (lora.py) whose embedding trains only the mask row, the clean stream's states need no gradient: it then
runs first without autograd, its K/V kept as a cache, and the noisy stream attends to that cache in a second
pass. Same states (the same keys and values, summed in another order), and backward walks the noisy stream
alone: with the cheap layout that is about a third of the columns.
"""

import torch
from transformers import DynamicCache


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


def decode_streams(model, embeds: torch.Tensor, mask: torch.Tensor, rope: torch.Tensor, noisy: int) -> torch.Tensor:
    """Hidden states (N, Ln + L, H) of the layout: embeds (N, Ln + L, H) with the noisy stream's Ln columns first,
    its additive mask (N, 1, Ln + L, Ln + L) and rope positions (A, N, Ln + L)."""
    columns = torch.arange(embeds.shape[1], device=embeds.device)
    if not clean_stream_is_frozen(model):
        with model.adapters_on(columns < noisy):
            return model.backbone.decode(embeds, mask, rope)
    cache, clean_columns = DynamicCache(), torch.zeros(embeds.shape[1] - noisy, dtype=torch.bool, device=embeds.device)
    with torch.no_grad(), model.adapters_on(clean_columns):  # no column noisy: the base model, as it must be
        clean = model.backbone.decode(embeds[:, noisy:].detach(), mask[:, :, noisy:, noisy:], rope[:, :, noisy:],
                                      cache, True)
    rows = mask[:, :, :noisy]  # the noisy queries' keys, reordered to the cache's layout: [clean ; noisy]
    with model.adapters_on(torch.ones(noisy, dtype=torch.bool, device=embeds.device)):
        drafts = model.backbone.decode(embeds[:, :noisy], torch.cat([rows[..., noisy:], rows[..., :noisy]], -1),
                                       rope[:, :, :noisy], cache, False)
    return torch.cat([drafts, clean], dim=1)
