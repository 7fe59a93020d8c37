"""The MiniVL models inside the package: they load by name (model + processor), stay small, and answer fixed
test samples the way they did when they shipped."""

import json

import pytest

from diffusionvl import DiffusionVL
from diffusionvl.checkpoints.folders import SHIPPED_FOLDER, SHIPPED_MODELS
from diffusionvl.cli import main
from diffusionvl.decoding.config import DecodingConfig
from diffusionvl.inference import answer, chat_inputs, load
from diffusionvl.minivl.generator import sample

# (task, test index) of seed-0 test samples both shipped models answer right; chosen once when they shipped,
# so a change that alters what the weights compute (loading, processing, decoding) shows up here.
PINNED = [("caption", 0), ("caption", 1), ("caption", 2), ("count", 0), ("count", 3), ("count", 4), ("digits", 0),
          ("digits", 1), ("digits", 2), ("chart", 0), ("chart", 1), ("chart", 3), ("scene", 0), ("scene", 1),
          ("scene", 2)]


@pytest.fixture(scope="module")
def shipped():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {name: load(name) for name in SHIPPED_MODELS}
    torch.set_num_threads(threads)


def test_shipped_models_are_small_and_load_by_name(shipped):
    size = sum(f.stat().st_size for f in SHIPPED_FOLDER.rglob("*") if f.is_file())
    assert size <= 30 * 2**20, f"the shipped models take {size / 2**20:.1f} MiB, more than the 30 MiB budget"
    model, processor = shipped["minivl-dvlm"]
    assert isinstance(model, DiffusionVL) and hasattr(processor, "image_processor")
    assert isinstance(DiffusionVL.from_pretrained("minivl-dvlm"), DiffusionVL)
    assert shipped["minivl-ar"][0].config.model_type == "qwen2_5_vl"


def pinned_answers(shipped, name: str, **decoding):
    model, processor = shipped[name]
    samples = [sample(task, "test", 0, index) for task, index in PINNED]
    config = DecodingConfig(max_new_tokens=64, **decoding)
    return answer(model, processor, chat_inputs(processor, [s.question for s in samples], [[s.image] for s in samples]),
                  config), [s.answer for s in samples]


@pytest.mark.parametrize("name", ["minivl-dvlm", "minivl-ar"])
def test_shipped_models_answer_the_pinned_samples(shipped, name):
    out, truth = pinned_answers(shipped, name, steps=8)
    assert out.texts == truth


def test_the_draft_only_translation_writes_its_sources_answers_speculatively(shipped):
    """minivl-dvlm-draft is minivl-ar plus adapters that act on masked positions alone: decoded speculatively,
    its answers are minivl-ar's greedy answers token for token, several tokens per forward."""
    out, truth = pinned_answers(shipped, "minivl-dvlm-draft", remasking_strategy="speculative")
    source, _ = pinned_answers(shipped, "minivl-ar")
    assert out.rows == source.rows and out.texts == truth
    assert out.tokens / out.row_forwards > 2


def test_eval_of_the_default_model_on_a_small_seeded_set(capsys):
    main(["eval", "--samples", "10", "--seed", "123", "--batch-size", "20", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "minivl-dvlm" and result["samples_per_task"] == 10
    assert result["mean_exact_match"] >= 0.6, result["tasks"]
