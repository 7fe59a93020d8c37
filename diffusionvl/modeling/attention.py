"""Grouped-query attention without copying K/V heads, under the engine's explicit masks.

transformers' `sdpa` attention lets SDPA share key/value heads (`enable_gqa`) only when there is no mask; with
the engine's 4-D block-causal mask it copies every layer's K and V from the key/value heads to all query heads
(`repeat_kv`) on every step, which costs time linear in the context per step (47 ms at 2,048 tokens, 179 ms at
8,192 on a Qwen2.5-0.5B shape, 2-core CPU). `sdpa_shared_kv` is the same call with `enable_gqa=True` under a
mask, registered with transformers' attention interface as `ATTENTION`. It is chosen once, when a model is
wrapped or loaded (`use_shared_kv_heads`, from DiffusionVL.__init__): training, the reference decoder and the
engine then all run it, and nothing switches it during `generate`, so threads sharing a model cannot disturb each
other. Without a mask or without grouped heads it is transformers' own `sdpa`.
"""

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "diffusionvl_sdpa"


def sdpa_shared_kv(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """query (N, heads, Q, D), key/value (N, kv_heads, K, D), attention_mask (N, 1, Q, K) -> (N, Q, heads, D).
    Without a mask or without grouped heads, transformers' own sdpa (which already avoids the copies there)."""
    if attention_mask is None or getattr(module, "num_key_value_groups", 1) == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def use_shared_kv_heads(config) -> None:
    """A decoder configured for `sdpa` runs `sdpa_shared_kv` from now on. Any other attention is left alone."""
    if config._attn_implementation != "sdpa":
        return
    AttentionInterface.register(ATTENTION, sdpa_shared_kv)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # 2-D masks become what sdpa would get
    config._attn_implementation = ATTENTION
