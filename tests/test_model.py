"""Wrapping real architectures: the loss, block causality, save/load, Auto classes and errors."""

import pytest
import torch
from conftest import EOT_ID, MASK_ID, VOCAB, prompt_answer_batch, random_ids, tiny_causal_lm, tiny_tokenizer, wrap
from transformers import AutoModelForCausalLM, MambaConfig

from diffusionvl import CheckpointLayoutError, DiffusionVL, UnsupportedModelError
from diffusionvl.modeling.noise import apply_noise, two_stream_layout


def test_loss_is_finite_and_reaches_every_weight(family):
    model = wrap(family).train()
    ids, labels = prompt_answer_batch()
    out = model(input_ids=ids, labels=labels, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and out.num_masked > 0
    out.loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cheap_and_full_noisy_streams_give_the_same_loss(family, attn):
    model = wrap(family, attn)
    ids, labels = prompt_answer_batch(n=3, length=19, prompt=9)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0  # a right-padded row
    mask[2, :2] = 0  # a left-padded row
    batch = model.add_noise(ids, labels, mask, generator=torch.Generator().manual_seed(1))
    cheap = model.diffusion_loss(batch, noisy_stream="cheap").loss
    full = model.diffusion_loss(batch, noisy_stream="full").loss
    assert torch.allclose(cheap, full, atol=1e-5, rtol=0)


def test_suffix_noise_masks_as_many_positions_as_independent_noise_but_always_a_blocks_last_ones():
    ids, labels = prompt_answer_batch(n=4, length=24, prompt=6)
    labels[3, 21:] = -100  # an answer that ends inside a block: its suffix is the last supervised positions
    valid = torch.ones_like(ids, dtype=torch.bool)
    t = torch.rand(4, 6, generator=torch.Generator().manual_seed(2))
    draw = lambda pattern: apply_noise(ids, labels, valid, t, 4, MASK_ID, torch.Generator().manual_seed(3), pattern)
    independent, suffix = draw("independent"), draw("suffix")
    per_block = lambda batch: batch.masked.view(4, 6, 4).sum(-1)
    assert torch.equal(per_block(suffix), per_block(independent))
    assert not torch.equal(suffix.masked, independent.masked)  # the control: the layouts differ
    supervised = (labels != -100).view(4, 6, 4)
    masked = suffix.masked.view(4, 6, 4)
    assert not (masked & ~supervised).any()
    for row, block in zip(*torch.where(masked.any(-1))):  # nothing supervised and known after a mask
        first = int(masked[row, block].int().argmax())
        assert masked[row, block, first:].eq(supervised[row, block, first:]).all()
    assert torch.equal(suffix.noisy_ids, torch.where(suffix.masked, MASK_ID, ids))
    with pytest.raises(ValueError, match="pattern must be one of"):
        draw("random")


def test_sdpa_and_eager_agree():
    ids, labels = prompt_answer_batch()
    losses = []
    for attn in ("sdpa", "eager"):
        model = wrap("qwen2", attn)
        losses.append(model(input_ids=ids, labels=labels, generator=torch.Generator().manual_seed(0)).loss)
    assert torch.allclose(losses[0], losses[1], atol=1e-5)


def test_block_causality_of_the_inference_forward(family):
    model = wrap(family, block_size=4)
    ids = random_ids(1, 12, seed=1)
    base = model(input_ids=ids).logits
    later = ids.clone()
    later[0, 8:] = random_ids(4, seed=2)  # block 2 changes
    assert torch.equal(model(input_ids=later).logits[:, :8], base[:, :8])
    same_block = ids.clone()
    same_block[0, 7] = (ids[0, 7] + 1 - 3) % 57 + 3  # last token of block 1 changes
    changed = model(input_ids=same_block).logits
    assert torch.equal(changed[:, :4], base[:, :4])
    assert not torch.allclose(changed[:, 4], base[:, 4])  # earlier token of the same block sees it


def test_left_padding_keeps_blocks_aligned_to_each_rows_start():
    model = wrap(block_size=4)
    ids = random_ids(1, 6, seed=3)
    alone = model(input_ids=ids).logits
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids], dim=1)
    mask = torch.tensor([[0] * 4 + [1] * 6])
    assert torch.allclose(model(input_ids=padded, attention_mask=mask).logits[:, 4:], alone, atol=1e-5)


def test_noisy_stream_equals_the_inference_forward_on_a_partly_noised_sequence():
    model = wrap(block_size=4)
    ids, labels = prompt_answer_batch(n=1, length=12, prompt=3)
    batch = model.add_noise(ids, labels, generator=torch.Generator().manual_seed(3))
    layout = two_stream_layout(batch, cheap=False, dtype=torch.float32)
    hidden = model.model.base_model(
        input_ids=layout.input_ids, attention_mask=layout.attention_mask, position_ids=layout.index
    ).last_hidden_state
    noisy_logits = model.get_output_embeddings()(hidden[:, :12])
    for j in range(3):  # block j noisy, earlier blocks clean, later blocks irrelevant
        seen = batch.clean_ids.clone()
        seen[:, 4 * j : 4 * j + 4] = batch.noisy_ids[:, 4 * j : 4 * j + 4]
        expected = model(input_ids=seen).logits[:, 4 * j : 4 * j + 4]
        assert torch.allclose(noisy_logits[:, 4 * j : 4 * j + 4], expected, atol=1e-5)


def test_one_block_reduces_to_the_llada_masked_diffusion_loss():
    length = 16
    model = wrap(block_size=length)
    ids, labels = prompt_answer_batch(n=4, length=length, prompt=6)
    batch = model.add_noise(ids, labels, generator=torch.Generator().manual_seed(0))
    ours = model.diffusion_loss(batch).loss
    # LLaDA: one bidirectional forward over x_t, CE at masked positions / t, over the answer length.
    full = torch.zeros(4, 1, length, length)
    logits = model.model(input_ids=batch.noisy_ids, attention_mask=full).logits
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
    t = batch.block_noise[:, :1]
    llada = ((ce * batch.masked / t).sum(1) / (labels != -100).sum(1)).mean()
    assert torch.allclose(ours, llada, atol=1e-5)


def test_save_and_load_give_identical_logits(tmp_path, family):
    model = wrap(family)
    model.save_pretrained(tmp_path)
    loaded = DiffusionVL.from_pretrained(tmp_path)
    auto = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(auto, DiffusionVL)
    assert loaded.config.block_size == 4 and loaded.special_tokens == model.special_tokens
    ids = random_ids(2, 10, seed=4)
    assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert torch.equal(auto(input_ids=ids).logits, model(input_ids=ids).logits)


def test_tied_embeddings_stay_tied_after_loading(tmp_path):
    model = DiffusionVL.from_autoregressive(tiny_causal_lm("qwen2", tie_word_embeddings=True), mask_token_id=MASK_ID)
    model.save_pretrained(tmp_path)
    loaded = DiffusionVL.from_pretrained(tmp_path)
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight


def test_mask_token_is_added_to_the_tokenizer_by_name():
    tokenizer = tiny_tokenizer(words=60)  # 63 tokens
    model = DiffusionVL.from_autoregressive(tiny_causal_lm(vocab_size=63), tokenizer, block_size=4)
    tokens = model.special_tokens
    assert tokenizer.convert_ids_to_tokens(tokens.mask) == "<|mask|>"
    assert tokens.eot == tokenizer.convert_tokens_to_ids("<|im_end|>") and tokens.pad == 0
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == 64


def test_unused_embedding_row_serves_as_mask_without_resizing():
    tokenizer = tiny_tokenizer(words=60)
    model = DiffusionVL.from_autoregressive(tiny_causal_lm(), tokenizer)  # 96 rows > 64 tokens
    assert model.get_input_embeddings().weight.shape[0] == VOCAB
    assert model.special_tokens.eot == EOT_ID


@pytest.mark.parametrize("block_size", [0, -3])
def test_bad_block_size_is_rejected(block_size):
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        wrap(block_size=block_size)


def test_all_ignored_labels_are_rejected():
    model = wrap()
    ids = random_ids(2, 8, seed=5)
    with pytest.raises(ValueError, match="-100"):
        model(input_ids=ids, labels=torch.full_like(ids, -100))


def test_mask_id_outside_the_vocabulary_is_rejected():
    with pytest.raises(ValueError, match="outside the vocabulary"):
        DiffusionVL.from_autoregressive(tiny_causal_lm(), mask_token_id=VOCAB + 5)


def test_state_space_model_is_rejected_by_name():
    mamba = AutoModelForCausalLM.from_config(MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1))
    with pytest.raises(UnsupportedModelError, match="MambaForCausalLM"):
        DiffusionVL.from_autoregressive(mamba, mask_token_id=MASK_ID)


def test_flash_attention_is_rejected_with_the_fix():
    model = tiny_causal_lm()
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(UnsupportedModelError, match="attn_implementation='sdpa'"):
        DiffusionVL.from_autoregressive(model, mask_token_id=MASK_ID)


def test_loading_an_autoregressive_checkpoint_says_how_to_translate_it(tmp_path):
    tiny_causal_lm().save_pretrained(tmp_path)
    with pytest.raises(CheckpointLayoutError, match="from_autoregressive"):
        DiffusionVL.from_pretrained(tmp_path)


def test_checkpoint_with_missing_weights_fails_loudly(tmp_path):
    from safetensors.torch import load_file, save_file

    wrap().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights.pop(next(k for k in weights if "layers.1.mlp" in k))
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointLayoutError, match="missing_keys"):
        DiffusionVL.from_pretrained(tmp_path)


def test_gpt2_with_learned_absolute_positions_wraps():
    from transformers import GPT2Config

    torch.manual_seed(0)
    gpt2 = AutoModelForCausalLM.from_config(
        GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128, eos_token_id=EOT_ID)
    ).eval()  # GPT-2 has dropout
    model = DiffusionVL.from_autoregressive(gpt2, mask_token_id=MASK_ID, block_size=4)
    ids, labels = prompt_answer_batch()
    batch = model.add_noise(ids, labels, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(model.diffusion_loss(batch, noisy_stream="cheap").loss, model.diffusion_loss(batch, noisy_stream="full").loss, atol=1e-5)
