"""What an autoregressive model must offer to be wrapped, checked by running it rather than by a list of names."""

import torch
from transformers import PreTrainedModel

from ..errors import UnsupportedModelError
from .attention import ATTENTION
from .backbones import TextBackbone
from .masks import to_attention_mask

# Flash-attention kernels take no arbitrary mask, so they cannot express block-causal attention.
SUPPORTED_ATTENTION = ("sdpa", "eager", ATTENTION)
PROBE_LENGTH = 8


def _fail(model, why: str):
    raise UnsupportedModelError(f"{type(model).__name__} cannot be wrapped for block diffusion: {why}")


def _probe_logits(model, backbone, ids: torch.Tensor, allowed: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Logits through the seams the library uses: embeddings, decoder with an explicit 4-D mask and positions."""
    valid = torch.ones_like(ids, dtype=torch.bool)
    mask = to_attention_mask(allowed[None], valid, model.dtype)
    return backbone.head(backbone.decode(backbone.embed(ids), mask, positions[None]))


def probe_ids(model, device) -> torch.Tensor:
    """(1, PROBE_LENGTH) plain text ids: none of the ids the config names (image and video placeholders and the
    like would ask for pixels the probe does not have)."""
    config = model.config
    named = {getattr(c, key) for c in (config, getattr(config, "text_config", None)) if c is not None
             for key in dir(c) if key.endswith("_token_id") and isinstance(getattr(c, key, None), int)}
    rows = model.get_input_embeddings().weight.shape[0]
    plain = [i for i in range(1, rows) if i not in named][:PROBE_LENGTH]
    return torch.tensor(plain, device=device)[None]


def check_wrappable(model) -> None:
    """The cheap checks of what is passed, before anything reads its config."""
    if type(model).__name__ == "DiffusionVL":  # by name: model.py imports this module
        raise UnsupportedModelError("the model is already a DiffusionVL; it needs no second translation (train or "
                                    "generate with it as it is).")
    if not isinstance(model, PreTrainedModel):
        raise UnsupportedModelError(
            f"from_autoregressive takes a transformers causal LM (a PreTrainedModel, e.g. from "
            f"AutoModelForCausalLM.from_pretrained, or a Qwen2.5-VL), got a {type(model).__name__}.")


def check_block_diffusion_support(model, backbone=None) -> None:
    """Raise UnsupportedModelError unless the model honours a custom 4-D mask and explicit position ids.

    Three tiny forwards: the causal mask through our seams must reproduce the model's own logits; a
    bidirectional mask must change the first position (the mask is read); reversed positions must change the
    last position (position ids are read).
    """
    check_wrappable(model)
    if getattr(model.config, "is_encoder_decoder", False):
        _fail(model, "it is not a decoder-only transformers causal LM.")
    if model.get_output_embeddings() is None or model.base_model is model:
        _fail(model, "it has no separate decoder and output head (load it with AutoModelForCausalLM).")
    impl = model.config._attn_implementation
    if impl not in SUPPORTED_ATTENTION:
        _fail(model, f"attn_implementation={impl!r} takes no custom mask; load it with attn_implementation='sdpa'.")
    backbone = backbone if backbone is not None else TextBackbone(model)
    device = model.get_input_embeddings().weight.device
    ids = probe_ids(model, device)
    positions = torch.arange(PROBE_LENGTH, device=device)[None]
    causal = torch.ones(PROBE_LENGTH, PROBE_LENGTH, dtype=torch.bool, device=device).tril()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = model(input_ids=ids).logits.float()
            ours = _probe_logits(model, backbone, ids, causal, positions).float()
            bidirectional = _probe_logits(model, backbone, ids, torch.ones_like(causal), positions).float()
            reversed_pos = _probe_logits(model, backbone, ids, causal, positions.flip(-1)).float()
    except Exception as error:  # any failure of the seams means the architecture cannot be driven this way
        _fail(
            model,
            f"a forward with a 4-D attention mask and position ids failed ({error}). Recurrent and state-space "
            "models have no attention to make bidirectional inside a block; use a transformer causal LM.",
        )
    finally:
        model.train(was_training)
    tolerance = 1e-3 * max(1.0, float(reference.abs().max()))
    if (ours - reference).abs().max() > tolerance:
        _fail(model, "its logits are not lm_head(decoder(x)) (e.g. soft-capping or scaling), or it ignores the mask.")
    # A seam that is ignored gives bit-identical outputs, so any difference at all shows it is read: random
    # tiny models attend almost uniformly and differ only slightly.
    if torch.equal(bidirectional[:, 0], ours[:, 0]):
        _fail(model, "it ignores a custom 4-D attention mask (block-causal attention needs one).")
    if torch.equal(reversed_pos[:, -1], ours[:, -1]):
        _fail(model, "it ignores explicit position_ids (blocks need per-row positions).")
