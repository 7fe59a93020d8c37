"""`recipe minivl --ablation`: the shared stages are made once and linked into every step, each step adds one
option to its translation, and the table reads static decoding and the fastest setting within a point on the
long-answer task (the stages are stubbed here; the quick recipe runs for real in test_recipe.py)."""

import json
from pathlib import Path

import pytest

from diffusionvl.minivl import ablation, recipe
from diffusionvl.minivl.generator import TASKS
from diffusionvl.minivl.recipe import RecipeConfig


def result(name, mean, long_match, long_speed):
    tasks = {task: {"exact_match": mean, "token_f1": 0.9, "tokens_per_forward": 1.0} for task in TASKS}
    tasks["scene"] = {"exact_match": long_match, "token_f1": 0.95, "tokens_per_forward": long_speed}
    return {"name": name, "mean_exact_match": mean, "tasks": tasks}


@pytest.fixture
def stubbed(monkeypatch):
    runs = []

    def shared_stages(config, root):
        for part in ablation.SHARED + ("eval",):
            (root / part).mkdir(parents=True, exist_ok=True)
        for name in ("minivl-ar.json", "baseline-dvlm.json"):
            (root / "eval" / name).write_text(json.dumps(result(name, 0.8, 0.6, 1.0)))

    def run(config):
        out = Path(config.out)
        assert (out / "minivl-ar").is_symlink() and (out / "eval" / "minivl-ar.json").is_file()
        static = 0.7 + 0.01 * len(runs)
        curve = [result("static", static, 0.6, 0.9), result("threshold@0.9", static - 0.005, 0.595, 3.1),
                 result("threshold@0.5", static - 0.05, 0.5, 3.8)]
        training = [{"step": s, "training_tokens": 500 * s, "mean_exact_match": static * s / 2} for s in (1, 2)]
        results = {"models": {"ar": result("ar", 0.8, 0.6, 1.0)}, "curve": curve, "training_curve": training}
        (out / "results.json").write_text(json.dumps(results))
        runs.append(config)
        return results

    monkeypatch.setattr(ablation, "shared_stages", shared_stages)
    monkeypatch.setattr(recipe, "run", run)
    return runs


def test_steps_share_the_source_and_baseline_and_the_table_reads_the_long_task(stubbed, tmp_path):
    table = ablation.run_ablation(RecipeConfig(str(tmp_path)))
    options = [(c.context_attention, c.ar_loss_weight, c.distill_weight, c.confidence_weight) for c in stubbed]
    assert options == [("block_causal", 0, 0, 0), ("causal", 0, 0, 0), ("causal", 1, 0, 0), ("causal", 1, 1, 0),
                       ("causal", 1, 1, 0.2)]
    lines = table.splitlines()
    assert lines[0].startswith("| step | mean | caption | count | digits | chart | scene | caption F1 | scene F1 |")
    # threshold@0.9 is within a point on the mean and on scene; threshold@0.5 is faster but 5 points worse
    assert lines[3].endswith("| -9.0 | threshold@0.9 | 70.5 | 59.5 | 3.10 |")
    assert (tmp_path / "ablation.png").stat().st_size > 0
    ablation.run_ablation(RecipeConfig(str(tmp_path)))  # every step finished: nothing runs again
    assert len(stubbed) == 5
