"""The SmolLM2 self-distillation prompt generator: deterministic, disjoint splits, every kind, well-formed chats."""

import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from diffusionvl.smollm2.prompts import KINDS, SPLITS, Prompt, generate, prompt, split_of

ROOT = Path(__file__).resolve().parent.parent


def test_same_arguments_give_the_same_prompts_and_another_seed_others():
    assert generate("train", 0, 120) == generate("train", 0, 120)
    assert prompt("facts", "test", 3, 7) == prompt("facts", "test", 3, 7)
    assert [p.key for p in generate("train", 0, 120)] != [p.key for p in generate("train", 1, 120)]
    assert prompt("rewrite", "train", 0, 0) != prompt("rewrite", "train", 0, 1)


def test_prompts_do_not_depend_on_pythonhashseed_nor_import_torch():
    code = ("import sys; from diffusionvl.smollm2.prompts import generate; "
            "print([p.key for p in generate('test', 5, 30)]); "
            "print(sorted({'torch', 'transformers'} & set(sys.modules)))")
    outputs = []
    for hash_seed in ("1", "2"):
        env = {"PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1]
    assert outputs[0].splitlines()[-1] == "[]"


def test_splits_are_disjoint_by_construction():
    test_keys = set()
    for seed in (0, 1):
        for p in generate("test", seed, 300):
            assert split_of(p.key) == "test"
            test_keys.add(p.key)
    for seed in (0, 1):
        train_keys = {p.key for p in generate("train", seed, 2000)}
        assert all(split_of(key) == "train" for key in train_keys)
        assert not test_keys & train_keys


def test_test_share_is_about_one_in_eight():
    rng = random.Random(0)
    strings = ["".join(rng.choices("abcdefghij ", k=20)) for _ in range(4000)]
    share = sum(split_of(s) == "test" for s in strings) / len(strings)
    assert 0.08 < share < 0.17


def test_kinds_interleave_and_chats_are_well_formed():
    assert [p.kind for p in generate("train", 0, 12)] == list(KINDS) * 2
    for split, count in (("train", 600), ("test", 120)):
        for p in generate(split, 0, count):
            assert isinstance(p, Prompt) and p.kind in KINDS
            assert p.messages[-1]["role"] == "user"
            assert all(m["role"] != "system" and m["content"].strip() for m in p.messages)
            assert len(p.key) < 250  # short enough for a 135M model to take in at a glance
            assert p.key == "\n".join(m["content"] for m in p.messages)
            if p.kind == "multiturn":
                assert [m["role"] for m in p.messages] == ["user", "assistant", "user"]
            else:
                assert [m["role"] for m in p.messages] == ["user"]


def test_prompts_are_distinct_within_a_call():
    for split, count in (("train", 2000), ("test", 400)):
        keys = [p.key for p in generate(split, 0, count)]
        assert len(set(keys)) == len(keys)


def test_arithmetic_uses_small_numbers():
    arithmetic = [p.key for p in generate("train", 0, 1200) if p.kind == "arithmetic"]
    assert len(arithmetic) == 200
    for text in arithmetic:
        numbers = [int(n) for n in re.findall(r"\d+", text)]
        assert 1 <= len(numbers) <= 3 and all(0 < n < 200 for n in numbers), text
        if (match := re.search(r"What is (\d+) \+ (\d+)\?", text)):
            assert int(match[1]) + int(match[2]) < 200, text
        if (match := re.search(r"Subtract (\d+) from (\d+)\.", text)):
            assert int(match[1]) < int(match[2]), text
    assert any("+" in text for text in arithmetic) and any("times" in text or " x " in text for text in arithmetic)


@pytest.mark.parametrize("call, names", [
    (lambda: prompt("poetry", "train", 0, 0), ("'poetry'", *KINDS)),
    (lambda: prompt("facts", "dev", 0, 0), ("'dev'", *SPLITS)),
    (lambda: generate("validation", 0, 1), ("'validation'", *SPLITS)),
    (lambda: generate("train", 0, -1), ("count", ">= 0", "-1")),
])
def test_bad_arguments_are_refused_by_name(call, names):
    with pytest.raises(ValueError) as error:
        call()
    assert all(name in str(error.value) for name in names)


def test_the_recipe_takes_the_ablation_options_to_convert_and_to_the_finetune(monkeypatch, tmp_path, capsys):
    """`recipe smollm2 --context-attention causal --distill-weight 1 ...`: each step of the ablation is one flag."""
    from diffusionvl import cli
    from diffusionvl.smollm2 import recipe
    from diffusionvl.training import convert

    seen = {}
    monkeypatch.setattr(recipe, "run", lambda config: seen.setdefault("config", config) and {"rows": []})
    monkeypatch.setattr("diffusionvl.smollm2.evaluate.markdown", lambda results: "")
    cli.main(["recipe", "smollm2", "--out", str(tmp_path), "--quick", "--context-attention", "causal",
              "--ar-loss-weight", "0.5", "--distill-weight", "1", "--confidence-weight", "0.1"])
    config = seen["config"]
    assert (config.context_attention, config.ar_loss_weight, config.distill_weight, config.confidence_weight) == \
        ("causal", 0.5, 1.0, 0.1)
    monkeypatch.setattr(convert, "convert", lambda *args, **kwargs: seen.setdefault("convert", kwargs))
    recipe.translated(config, tmp_path)
    assert seen["convert"]["context_attention"] == "causal" and seen["convert"]["logit_shift"] is True
