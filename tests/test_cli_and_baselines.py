"""The command line, the baselines and a smoke run of the benchmark."""

import json

import pytest
import torch
from conftest import EOT_ID, MASK_ID, cli_error, random_ids, tiny_causal_lm, tiny_tokenizer, toy_prompt

from diffusionvl import DiffusionVL, cli
from diffusionvl.baselines import autoregressive_generate, full_sequence_generate


@pytest.fixture
def saved(tmp_path):
    tokenizer = tiny_tokenizer(words=60)
    model = DiffusionVL.from_autoregressive(tiny_causal_lm(vocab_size=63), tokenizer, block_size=4)  # + <|mask|>
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return tmp_path, model, tokenizer


def test_cli_generate_prints_what_the_python_api_returns(saved, capsys):
    path, model, tokenizer = saved
    cli.main(["generate", str(path), "--prompt", "w1 w2 w3 w4 w5", "--max-new-tokens", "8", "--steps", "2"])
    printed = capsys.readouterr()
    ids = tokenizer("w1 w2 w3 w4 w5", return_tensors="pt", add_special_tokens=False).input_ids
    expected = tokenizer.decode(model.generate(ids, max_new_tokens=8, steps=2)[0], skip_special_tokens=True)
    assert printed.out.strip() == expected.strip() and expected.strip()
    assert "tokens/forward" in printed.err


def test_cli_errors_name_the_problem(saved, tmp_path, capsys):
    path, _, _ = saved
    assert "not found" in cli_error(capsys, "generate", tmp_path / "nowhere", "--prompt", "w1")
    assert "prompt is empty" in cli_error(capsys, "generate", path, "--prompt", "  ")
    assert "steps must be a positive integer" in cli_error(capsys, "generate", path, "--prompt", "w1", "--steps", "0")


def test_autoregressive_baseline_is_greedy_and_counts_its_forwards():
    ar = tiny_causal_lm()
    prompt = random_ids(1, 7, seed=1)
    out = autoregressive_generate(ar, prompt, max_new_tokens=6, eot_id=EOT_ID, pad_id=0)
    sequence = prompt[0].tolist()
    with torch.no_grad():
        for _ in range(6):  # greedy without a cache, by hand
            sequence.append(int(ar(input_ids=torch.tensor([sequence])).logits[0, -1].argmax()))
    expected = sequence[7:]
    expected = expected[: expected.index(EOT_ID) + 1] if EOT_ID in expected else expected
    assert out.sequences[0, : len(expected)].tolist() == expected
    assert out.nfe == len(expected)  # one forward per new token, the first one being the prefill


def test_full_sequence_baseline_uses_a_fixed_canvas_and_the_step_budget(trained):
    out = full_sequence_generate(trained, toy_prompt([5, 6, 7]), gen_length=16, block_length=4, steps=8)
    assert out.nfe == 8  # 4 blocks x 2 steps, no early stop: the length is fixed
    produced = out.sequences[0].tolist()
    assert MASK_ID not in produced and EOT_ID not in produced[:-1]  # cut right after the first end-of-turn


def test_benchmark_smoke_run_reports_every_decoder_and_writes_its_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    cli.main("bench --ar-steps 2 --diffusion-steps 2 --prompts 2 --runs 1 --max-new-tokens 16 --block-size 4 --steps 4 "
             f"--json {out}".split())
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows][1:4] == ["block, static", "block, dynamic", "block, threshold"]
    static = rows[1]
    assert static["tokens_per_forward"] <= 1.0  # steps == block size: one token per forward at most
    assert rows[-1]["nfe_per_prompt"] == 16  # full sequence: 4 blocks x 4 steps, fixed length
    assert "| block, static |" in capsys.readouterr().out


def test_training_benchmark_checks_the_losses_and_writes_its_json(tmp_path, capsys):
    out = tmp_path / "bench_train.json"
    cli.main(f"bench-train --image-side 2 --hidden 32 --layers 1 --heads 2 --steps 2 --warmup 0 --json {out}".split())
    rows = json.loads(out.read_text())["rows"]
    assert [r["layout"] for r in rows] == ["full", "cheap"] and rows[0]["loss_checked_steps"] == 2
    assert rows[1]["saved_for_backward_mib"] < rows[0]["saved_for_backward_mib"]  # the cheap stream keeps less
    assert "Loss check: cheap == full on all 2 batches" in capsys.readouterr().out


def test_python_dash_m_runs_the_command_line():
    import subprocess
    import sys

    from diffusionvl import __version__

    done = subprocess.run([sys.executable, "-m", "diffusionvl", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"diffusionvl {__version__}"
