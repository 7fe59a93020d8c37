"""`recipe smollm2 --ablation`: the steps add one option each, share one data set and the AR row, skip what is
finished, and the table and plot come from each step's results (the recipe itself is stubbed here; the quick
recipe runs for real in test_smollm2.py)."""

import json
from pathlib import Path

import pytest

from diffusionvl.smollm2 import ablation, recipe
from diffusionvl.smollm2.recipe import RecipeConfig


def fake_results(config, static_f1):
    rows = [{"name": "AR (greedy, KV cache)", "token_f1": 1.0, "tokens_per_forward": 1.0},
            {"name": "static", "token_f1": static_f1, "exact_match": 0.5, "perplexity_ratio": 1.5,
             "tokens_per_forward": 0.9},
            {"name": "threshold@0.5", "token_f1": static_f1 - 0.1, "tokens_per_forward": 2.5},
            {"name": "threshold@0.9", "token_f1": static_f1 - 0.01, "tokens_per_forward": 1.4}]
    if config.context_attention == "causal":
        rows.append({"name": "causal mode (KV cache)", "token_f1": 0.97, "tokens_per_forward": 1.0})
    curve = [{"step": s, "training_tokens": 1000 * s, "token_f1": static_f1 * s / 2} for s in (1, 2)]
    return {"rows": rows, "curve": curve}


@pytest.fixture
def stubbed(monkeypatch):
    runs = []

    def run(config):
        out = Path(config.out)
        assert (out / "data" / "test.json").is_file()  # the shared data, through the link
        (out / "eval").mkdir(exist_ok=True)
        if not (out / "eval" / "ar.json").is_file():
            (out / "eval" / "ar.json").write_text(json.dumps({"name": "AR", "from": out.name}))
        results = fake_results(config, 0.5 + 0.1 * len(runs))
        (out / "results.json").write_text(json.dumps(results))
        runs.append(config)
        return results

    def make_data(config, out):
        (out / "data").mkdir(parents=True, exist_ok=True)
        (out / "data" / "test.json").write_text("[]")

    monkeypatch.setattr(recipe, "run", run)
    monkeypatch.setattr(recipe, "make_data", make_data)
    return runs


def test_each_step_adds_one_option_and_shares_the_data_and_the_ar_row(stubbed, tmp_path):
    table = ablation.run_ablation(RecipeConfig(str(tmp_path)))
    options = [(c.context_attention, c.ar_loss_weight, c.distill_weight, c.confidence_weight, c.lora_scope,
                c.noise_pattern) for c in stubbed]
    independent = "independent"
    assert options == [("block_causal", 0, 0, 0, "all", independent), ("causal", 0, 0, 0, "all", independent),
                       ("causal", 1, 0, 0, "all", independent), ("causal", 1, 1, 0, "all", independent),
                       ("causal", 1, 1, 0.2, "all", independent), ("causal", 0, 1, 0.2, "noisy", independent),
                       ("causal", 0, 1, 0.2, "noisy", "suffix")]
    assert [Path(c.out).name for c in stubbed] == [name for name, _, _ in ablation.STEPS]
    assert ablation.STEPS[-1][0] == "7-suffix-noise"
    assert all(json.loads((Path(c.out) / "eval" / "ar.json").read_text())["from"] == "1-shipped" for c in stubbed)
    lines = table.splitlines()
    assert lines[2].startswith("| as first shipped | 0.500 |") and "| - |" in lines[2]  # no causal mode
    # the fastest setting within 0.05 F1 of static: threshold@0.9 (threshold@0.5 is faster but 0.1 worse)
    assert lines[3] == "| + causal context | 0.600 | 0.500 | 1.50 | 0.970 | threshold@0.9 | 0.590 | 1.40 |"
    assert (tmp_path / "ablation.md").read_text() == table and (tmp_path / "ablation.png").stat().st_size > 0


def test_finished_steps_are_skipped_and_a_subset_can_run_first(stubbed, tmp_path):
    ablation.run_ablation(RecipeConfig(str(tmp_path)), only=["5-confidence"])
    assert [Path(c.out).name for c in stubbed] == ["5-confidence"]
    assert ablation.markdown(ablation.summaries(RecipeConfig(str(tmp_path)))).count("\n") == 3
    ablation.run_ablation(RecipeConfig(str(tmp_path)))
    assert [Path(c.out).name for c in stubbed] == ["5-confidence", "1-shipped", "2-causal", "3-ar", "4-distill",
                                                   "6-draft-only", "7-suffix-noise"]


def test_the_command_line_names_the_steps(stubbed, tmp_path, capsys):
    from diffusionvl import cli

    with pytest.raises(SystemExit):
        cli.main(["recipe", "smollm2", "--out", str(tmp_path), "--ablation", "8-more"])
    assert "unknown ablation step(s) ['8-more']; the steps are 1-shipped," in capsys.readouterr().err
    cli.main(["recipe", "smollm2", "--out", str(tmp_path), "--ablation", "2-causal", "--steps", "50"])
    assert [(Path(c.out).name, c.steps) for c in stubbed] == [("2-causal", 50)]
    cli.main(["recipe", "smollm2", "--out", str(tmp_path / "own"), "--ablation", "2-causal", "--noise-pattern",
              "suffix"])
    assert stubbed[-1].noise_pattern == "suffix"
    assert "| + causal context |" in capsys.readouterr().out
