"""`diffusionvl recipe minivl --quick` end to end, its resume, and the commands that run on its models: demo,
chat, generate --json."""

import json
import re
import shutil

import pytest
from conftest import cli_error

from diffusionvl.cli import main
from diffusionvl.minivl.recipe import RecipeConfig, run


def quick(out) -> RecipeConfig:
    """The quick recipe: like the shipped one, every option that keeps the source is on, so the translation distils
    from a frozen copy of its source end to end."""
    config = RecipeConfig.quick(str(out))
    assert config.context_attention == "causal" and config.distill_weight > 0 and config.ar_loss_weight > 0
    return config


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished quick recipe: (output folder, results)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread beats two fighting over a busy 2-core machine
    out = tmp_path_factory.mktemp("recipe") / "minivl"
    results = run(quick(out))
    yield out, results
    torch.set_num_threads(threads)


def test_quick_recipe_writes_every_stage_and_the_results(study):
    out, results = study
    for name in ("minivl-ar", "minivl-dvlm", "baseline-dvlm"):
        assert (out / name / "config.json").is_file() and (out / name / "processor_config.json").is_file()
    assert json.loads((out / "minivl-ar" / "config.json").read_text())["model_type"] == "qwen2_5_vl"
    assert json.loads((out / "minivl-dvlm" / "config.json").read_text())["model_type"] == "diffusionvl"
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    costs = results["costs"]
    records = len(json.loads((out / "data" / "train.json").read_text()))
    assert costs["ar"]["distinct_samples"] == records == 50 and costs["ar"]["stage"] == "autoregressive"
    assert costs["dvlm"]["distinct_samples"] == 5  # 5% of 50 is 2, raised to one sample per task
    assert costs["baseline"]["token_positions"] >= costs["ar"]["token_positions"]  # at least the source's compute
    for key in ("ar", "dvlm", "baseline"):
        assert set(results["models"][key]["tasks"]) == {"caption", "count", "digits", "chart", "scene"}
    assert json.loads((out / "minivl-dvlm" / "config.json").read_text())["context_attention"] == "causal"
    assert results["models"]["ar"]["tokens_per_forward"] == 1.0
    assert [entry["name"] for entry in results["curve"]] == ["static", "dynamic@0.9", "threshold@0.9", "speculative"]
    training = results["training_curve"]  # the translation's checkpoints (steps 2 and 3 of 3)
    assert [entry["step"] for entry in training] == [2, 3] and 0 < training[0]["training_tokens"]
    assert set(training[0]) >= {"mean_exact_match", "scene_exact_match"}
    table = (out / "results.md").read_text()
    assert "| minivl-ar (AR source) | autoregressive | 50 |" in table and "threshold@0.9" in table
    assert "| scene | caption F1 | scene F1 | mean |" in table


def test_a_rerun_trains_nothing_and_a_lost_stage_is_rebuilt_from_its_checkpoint(study, tmp_path):
    out, results = study
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    ar_weights = (copy / "minivl-ar" / "model.safetensors").stat().st_mtime_ns
    shutil.rmtree(copy / "minivl-dvlm")  # as if killed after training, before the weights were published
    for stale in ("results.json", "eval"):
        path = copy / stale
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    again = run(quick(copy))
    assert (copy / "minivl-ar" / "model.safetensors").stat().st_mtime_ns == ar_weights
    for key in ("ar", "dvlm", "baseline"):  # the same weights give the same answers
        assert again["models"][key]["tasks"] == results["models"][key]["tasks"]
        assert again["costs"][key]["steps"] == results["costs"][key]["steps"]


def test_recipe_refuses_bad_options():
    with pytest.raises(ValueError, match="translate_fraction must lie in"):
        RecipeConfig("x", translate_fraction=0)
    with pytest.raises(ValueError, match="ar_steps must be at least 1"):
        RecipeConfig("x", ar_steps=0)


def test_generate_json_and_the_ar_source_behind_a_flag(study, capsys):
    out, _ = study
    image = str(out / "data" / "images" / "train-caption-0-0.png")
    main(["generate", "--model", str(out / "minivl-dvlm"), "--image", image, "--prompt", "Describe the image.",
          "--json", "--max-new-tokens", "8"])
    result = json.loads(capsys.readouterr().out)
    assert {"text", "nfe", "tokens_per_forward", "seconds", "tokens"} <= set(result) and result["nfe"] > 0
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(out / "minivl-ar"), "--image", image, "--prompt", "Describe the image."])
    assert "not a DiffusionVL one" in capsys.readouterr().err
    main(["generate", str(out / "minivl-ar"), "--autoregressive", "--image", image, "--prompt", "Describe the image.",
          "--json", "--max-new-tokens", "8"])
    assert json.loads(capsys.readouterr().out)["tokens_per_forward"] == 1.0


def test_demo_answers_side_by_side_and_saves_the_images(study, tmp_path, capsys):
    out, _ = study
    main(["demo", "--dvlm", str(out / "minivl-dvlm"), "--ar", str(out / "minivl-ar"), "--samples", "2",
          "--save", str(tmp_path / "images")])
    captured = capsys.readouterr()
    assert captured.out.count("truth: ") == 2 and captured.out.count("  dVLM ") == 2
    assert captured.out.count("  AR ") == 2 and "Q: Describe the image." in captured.out
    assert captured.out.count("tokens/forward") == 6  # each answer, and one summary line per model
    assert "dVLM decoding: speculative, drafts checked by" in captured.out  # by default, by the AR it loaded
    assert "/2 right" in captured.out.splitlines()[-2]
    assert captured.out.splitlines()[-1] == "the dVLM's answer equals the AR's on 2/2 samples"  # lossless
    assert len(list((tmp_path / "images").glob("*.png"))) == 2
    main(["demo", "--dvlm", str(out / "minivl-dvlm"), "--ar", str(out / "minivl-ar"), "--samples", "1",
          "--verifier", "self"])
    captured = capsys.readouterr()
    assert "dVLM decoding: speculative, drafts checked by its own causal mode" in captured.out
    assert re.fullmatch(r"the dVLM's answer equals the AR's on [01]/1 samples", captured.out.splitlines()[-1])
    assert "--verifier ar checks the drafts with the AR source" in cli_error(
        capsys, "demo", "--dvlm", str(out / "minivl-dvlm"), "--ar", "none", "--verifier", "ar")


def test_chat_takes_turns_images_and_commands(study, monkeypatch, capsys):
    out, _ = study
    image = str(out / "data" / "images" / "train-count-0-0.png")
    lines = iter([f"/image {image}", "How many red shapes are there?", "/image /no/such.png", "/nope", "/reset",
                  "Read the number.", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    monkeypatch.setenv("XDG_CACHE_HOME", str(out.parent / "cache"))
    main(["chat", "--model", str(out / "minivl-dvlm"), "--max-new-tokens", "8"])
    captured = capsys.readouterr()
    assert captured.out.count("model> ") == 2
    assert "image attached" in captured.err and "/no/such.png" in captured.err and "unknown command /nope" in captured.err
