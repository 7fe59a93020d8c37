"""The block cache: forwards write without keeping, commit keeps, rows can leave."""

import torch
from conftest import random_ids, wrap

from diffusionvl.decoding.kv_cache import BlockCache


def test_a_forward_is_kept_only_when_committed_and_matches_a_dynamic_cache():
    model = wrap(block_size=4)
    decoder = model.model.base_model
    ids = random_ids(2, 12, seed=1)
    cache = BlockCache(model.config.base_config.num_hidden_layers, capacity=16)
    decoder(input_ids=ids[:, :8], cache=cache, use_cache=True)
    assert cache.get_seq_length() == 0  # written, not kept
    cache.commit(8)
    first = decoder(input_ids=ids[:, 8:], cache=cache, use_cache=True).last_hidden_state
    again = decoder(input_ids=ids[:, 8:], cache=cache, use_cache=True).last_hidden_state
    assert cache.get_seq_length() == 8 and torch.equal(first, again)  # the second write overwrote the first
    full = decoder(input_ids=ids).last_hidden_state  # causal, no cache
    assert torch.allclose(first, full[:, 8:], atol=1e-5)
    cache.batch_select_indices(torch.tensor([1]))
    alone = decoder(input_ids=ids[1:, 8:], cache=cache, use_cache=True).last_hidden_state
    assert torch.allclose(alone, full[1:, 8:], atol=1e-5)
