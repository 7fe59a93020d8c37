"""Draft-only adapters (`lora_scope="noisy"`): LoRA acts on the noisy stream alone, so a causal-context
translation's clean stream, committed K/V and causal mode stay its source's exactly, while its drafts change."""

import pytest
import torch
from conftest import MASK_ID, prompt_answer_batch, random_ids, tiny_causal_lm, tiny_tokenizer
from transformers import DynamicCache

from diffusionvl import DiffusionVL
from diffusionvl.errors import DiffusionVLError
from diffusionvl.modeling.lora import add_lora, merge_lora
from diffusionvl.modeling.loss import Objective

pytest.importorskip("peft")
CAUSAL = dict(context_attention="causal", logit_shift=True)


def draft_only(seed: int = 0, scope: str = "noisy", block_size: int = 4, tokenizer=None, **options):
    """A tiny causal translation with rank-4 adapters whose B is random (a fresh adapter is zero, so it would
    prove nothing), and its source. With `tokenizer`, the mask token is found (or added) by name in it."""
    source = tiny_causal_lm("llama", seed=seed)
    mask = {} if tokenizer is not None else dict(mask_token_id=MASK_ID)
    model = DiffusionVL.from_autoregressive(tiny_causal_lm("llama", seed=seed), tokenizer, block_size=block_size,
                                            **mask, **{**CAUSAL, **options})
    add_lora(model, rank=4, scope=scope)
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model.eval(), source.eval()


def test_the_clean_stream_and_the_causal_mode_are_the_source_and_the_drafts_are_not():
    from diffusionvl.inference import causal_model

    model, source = draft_only(seed=1)
    ids = random_ids(2, 11, seed=2)
    with torch.no_grad():
        theirs = source(input_ids=ids).logits
        assert torch.equal(model(input_ids=ids).logits[:, 1:], theirs[:, :-1])
        assert torch.equal(causal_model(model)(input_ids=ids).logits, theirs)
        # the last block is the one being denoised: the adapters act there, and only there
        denoising = model(input_ids=ids, denoising=True).logits
        assert torch.equal(denoising[:, 1:-4], theirs[:, :-5])
        assert (denoising[:, -3:] - theirs[:, -4:-1]).abs().max() > 1e-2
    everywhere, _ = draft_only(seed=1, scope="all")
    with torch.no_grad():  # the control: ordinary adapters move the clean stream
        assert (everywhere(input_ids=ids).logits[:, 1:] - theirs[:, :-1]).abs().max() > 1e-2


@pytest.mark.parametrize("commit", ["fused", "separate"])
@pytest.mark.parametrize("strategy", ["low_confidence_static", "low_confidence_dynamic"])
def test_the_engine_writes_what_the_reference_decoder_writes(commit, strategy):
    model, _ = draft_only(seed=3)
    options = dict(max_new_tokens=14, steps=2, remasking_strategy=strategy, confidence_threshold=0.05,
                   commit=commit)
    for length in (3, 4, 9):
        ids = random_ids(1, length, seed=length)
        fast = model.generate(ids, **options)
        reference = model.generate(ids, use_cache=False, **options)
        assert torch.equal(fast, reference), length
    plain, _ = draft_only(seed=3, scope="all")
    assert not torch.equal(plain.generate(random_ids(1, 9, seed=9), **options), fast)


def test_a_batch_equals_each_prompt_alone():
    model, _ = draft_only(seed=4)
    prompts = [random_ids(n, seed=n) for n in (3, 9, 5)]
    ids, mask = torch.zeros(3, 9, dtype=torch.long), torch.zeros(3, 9, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, 9 - len(prompt):], mask[row, 9 - len(prompt):] = prompt, 1
    batch = model.generate(ids, mask, max_new_tokens=10, steps=2)
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], max_new_tokens=10, steps=2)
        assert torch.equal(batch[row, : alone.shape[1]], alone[0])


def test_training_moves_the_drafts_only_and_distils_from_its_own_clean_stream(monkeypatch):
    model, source = draft_only(seed=5)
    model.train()
    ids, labels = prompt_answer_batch(n=2, length=16, prompt=6)
    out = model(ids, labels=labels, generator=torch.Generator().manual_seed(0), objective=Objective(distill=1.0))
    out.loss.backward()
    grads = {name: parameter.grad for name, parameter in model.named_parameters() if "lora_" in name}
    assert grads and all(grad is not None and grad.abs().sum() > 0 for grad in grads.values())
    # the teacher taken from the clean stream is the one a separate forward of the base gives
    from diffusionvl.modeling import objective as terms

    batch = model.add_noise(ids, labels, generator=torch.Generator().manual_seed(0))
    taken = {}
    monkeypatch.setattr(terms, "distillation_loss",
                        lambda logits, teacher, temperature: taken.setdefault("teacher", teacher).sum() * 0)
    model.diffusion_loss(batch, objective=Objective(distill=1.0))
    masked = batch.masked.nonzero()
    with torch.no_grad():
        expected = source(input_ids=batch.clean_ids).logits[masked[:, 0], masked[:, 1] - 1]
    assert (taken["teacher"] - expected).abs().max() <= 1e-4


def test_a_frozen_clean_stream_runs_first_without_gradients_and_gives_the_one_pass_loss_and_gradients(monkeypatch):
    from diffusionvl.modeling import streams
    from diffusionvl.training.train import train_mask_row

    model, _ = draft_only(seed=8)
    model.train()
    assert streams.clean_stream_is_frozen(model)  # only the adapters train (PEFT's rule after add_lora)
    train_mask_row(model)
    assert streams.clean_stream_is_frozen(model)  # the mask row too: clean tokens never use it
    ids, labels = prompt_answer_batch(n=3, length=22, prompt=7)

    def step(clean_first=None):
        model.zero_grad()
        batch = model.add_noise(ids, labels, generator=torch.Generator().manual_seed(1))
        out = model.diffusion_loss(batch, objective=Objective(distill=1.0), clean_first=clean_first)
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    passes = []
    monkeypatch.setattr(streams, "DynamicCache", lambda: passes.append(1) or DynamicCache())
    two_pass, two_grads = step()  # the first forward of a fresh model: its gate is built before the clean pass
    assert passes == [1]
    one_pass, one_grads = step(clean_first=False)
    assert len(passes) == 1 and (two_pass - one_pass).abs() <= 1e-5
    assert two_grads.keys() == one_grads.keys() and len(one_grads) > 1
    assert all((two_grads[n] - one_grads[n]).abs().max() <= 1e-5 for n in one_grads)
    model.trained_embedding_rows = None  # a user's own embedding training: every row trains, so the clean
    assert not streams.clean_stream_is_frozen(model)  # stream needs its gradients
    with pytest.raises(ValueError, match="clean_first=True needs a clean stream that no training weight acts on"):
        step(clean_first=True)
    with torch.no_grad():
        assert not streams.clean_stream_is_frozen(draft_only(seed=8)[0])  # nothing to train: one pass
    everywhere, _ = draft_only(seed=8, scope="all")
    assert not streams.clean_stream_is_frozen(everywhere.train())


def test_the_adapter_folder_keeps_them_unmerged_and_decodes_the_same(tmp_path, monkeypatch):
    from diffusionvl.inference import causal_model, load
    from diffusionvl.training.adapters import build, save_adapter

    tokenizer = tiny_tokenizer()
    model, source = draft_only(seed=6, tokenizer=tokenizer)
    source.save_pretrained(tmp_path / "base")
    save_adapter(model, tokenizer, tmp_path / "adapter", str(tmp_path / "base"), [model.special_tokens.mask],
                 dtype=torch.float32)
    rebuilt = build(tmp_path / "adapter").eval()
    assert rebuilt.config.lora_scope == "noisy" and rebuilt.config.lora
    ids = random_ids(1, 7, seed=6)
    with torch.no_grad():  # before any forward of its own: the causal mode of a freshly loaded model is the source
        assert torch.equal(causal_model(rebuilt)(input_ids=ids).logits, source(input_ids=ids).logits)
    expected = model.generate(ids, max_new_tokens=12, steps=2)
    assert torch.equal(rebuilt.generate(ids, max_new_tokens=12, steps=2), expected)
    rebuilt.save_pretrained(tmp_path / "full")
    again = DiffusionVL.from_pretrained(tmp_path / "full").eval()
    assert torch.equal(again.generate(ids, max_new_tokens=12, steps=2), expected)
    monkeypatch.setenv("DIFFUSIONVL_CACHE", str(tmp_path / "cache"))  # the folder as a model path, as the CLI takes it
    opened, processor = load(tmp_path / "adapter")
    assert torch.equal(opened.generate(ids, max_new_tokens=12, steps=2), expected)
    assert processor.convert_tokens_to_ids("<|mask|>") == opened.special_tokens.mask
    assert len(list((tmp_path / "cache" / "adapters").iterdir())) == 1


def test_they_cannot_be_merged_and_the_training_options_that_do_not_fit_are_refused(tmp_path):
    from diffusionvl.training.config import TrainingConfig

    model, _ = draft_only(seed=7)
    with pytest.raises(ValueError, match="cannot be merged"):
        merge_lora(model)
    base = dict(data="d.json", model="m", output_dir=str(tmp_path), stage="diffusion", lora_scope="noisy")
    for extra, message in ((dict(), "--lora-rank is 0"), (dict(lora_rank=4, ar_loss_weight=1.0), "ar-loss-weight"),
                           (dict(lora_rank=4, gradient_checkpointing=True), "gradient-checkpointing")):
        with pytest.raises(DiffusionVLError, match=message):
            TrainingConfig(**base, **extra)
    with pytest.raises(DiffusionVLError, match="--lora-scope must be"):
        TrainingConfig(**{**base, "lora_scope": "clean"}, lora_rank=4)


def test_in_a_vision_language_model_they_train_alone_so_the_image_features_stay_the_sources(tmp_path):
    """The projector (merger) feeds image features to the clean stream: trained beside draft-only adapters it
    would move the causal mode away from the source, so it stays frozen whatever --train-projector says."""
    from conftest import tiny_qwen_vl

    from diffusionvl.modeling.streams import clean_stream_is_frozen
    from diffusionvl.training.config import TrainingConfig
    from diffusionvl.training.train import set_trainable

    model = DiffusionVL.from_autoregressive(tiny_qwen_vl(), mask_token_id=MASK_ID, block_size=4, **CAUSAL)
    add_lora(model, rank=4, scope="noisy")
    base = dict(data="d.json", model="m", output_dir=str(tmp_path), lora_rank=4, lora_scope="noisy")
    config = TrainingConfig(**base)
    assert config.train_projector  # the default, which draft-only adapters override
    set_trainable(model, config)
    trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trained and all("lora_" in name or name.endswith("embed_tokens.weight") for name in trained)
    assert clean_stream_is_frozen(model)
    with pytest.raises(DiffusionVLError, match="--train-vision"):
        TrainingConfig(**base, train_vision=True)
