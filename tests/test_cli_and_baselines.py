"""The command line, the baselines and a smoke run of the benchmark."""

import argparse
import json

import pytest
import torch
from conftest import EOT_ID, MASK_ID, cli_error, tiny_causal_lm, tiny_tokenizer, toy_prompt

from diffusionvl import DiffusionVL, cli
from diffusionvl.decoding.baselines import full_sequence_generate


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
    assert "expected an integer or 'all'" in cli_error(capsys, "generate", path, "--prompt", "w1",
                                                       "--speculative-copies", "two")


def test_the_decoding_flags_give_speculative_copies_as_a_count_or_all():
    parser = argparse.ArgumentParser()
    cli.add_decoding_arguments(parser)
    for argv, copies in (([], 1), (["--speculative-copies", "3"], 3), (["--speculative-copies", "all"], None)):
        config = cli.decoding_config(parser.parse_args(["--strategy", "speculative", *argv]))
        assert config.speculative and config.speculative_copies == copies


def test_the_ar_baseline_decodes_a_padded_batch_greedily_with_its_cache():
    from diffusionvl.decoding.config import DecodingConfig
    from diffusionvl.inference import answer

    ar, tokenizer = tiny_causal_lm(vocab_size=63), tiny_tokenizer(words=60)
    prompts = ["w1 w2 w3 w4 w5 w6 w7", "w8 w9 w10"]  # different lengths: the batch is left-padded
    inputs = tokenizer(prompts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt")
    out = answer(ar, tokenizer, dict(inputs), DecodingConfig(max_new_tokens=6))
    for prompt, row in zip(prompts, out.rows):
        sequence = tokenizer(prompt, add_special_tokens=False).input_ids
        length = len(sequence)
        with torch.no_grad():
            for _ in range(6):  # greedy without a cache or padding, by hand
                sequence.append(int(ar(input_ids=torch.tensor([sequence])).logits[0, -1].argmax()))
        expected = sequence[length:]
        assert row == (expected[: expected.index(EOT_ID) + 1] if EOT_ID in expected else expected)
    assert out.nfe == max(len(row) for row in out.rows)  # one batched forward per position, the prefill first
    assert out.row_forwards == sum(len(row) for row in out.rows)  # a row takes part until its end-of-turn


def test_full_sequence_baseline_uses_a_fixed_canvas_and_the_step_budget(trained):
    out = full_sequence_generate(trained, toy_prompt([5, 6, 7]), gen_length=16, block_length=4, steps=8)
    assert out.nfe == 8  # 4 blocks x 2 steps, no early stop: the length is fixed
    produced = out.sequences[0].tolist()
    assert MASK_ID not in produced and EOT_ID not in produced[:-1]  # cut right after the first end-of-turn


def test_benchmark_runs_every_decoder_on_the_shipped_model_and_writes_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    cli.main(f"bench --samples 1 --repeats 1 --batch-sizes 1,2 --thresholds 0.9 --max-new-tokens 16 --device cpu "
             f"--json {out} --plot {png}".split())
    result = json.loads(out.read_text())
    rows = {(r["setting"], r["batch_size"]): r for r in result["rows"]}
    # minivl-dvlm has causal context and logit shift: it also decodes speculatively
    settings = ["AR", "static", "static/2", "dynamic@0.9", "threshold@0.9", "speculative"]
    assert set(rows) == {(s, n) for s in settings for n in (1, 2)} | {("LLaDA-V", 1)}  # LLaDA-V: batch 1 only
    assert result["settings"]["source"] == "minivl-ar" and result["settings"]["prompts"] == 5  # one per task
    assert rows[("AR", 1)]["tokens_per_forward"] == 1.0
    for (setting, batch), row in rows.items():  # each speed is over AR's at the same batch size
        if setting not in ("AR", "LLaDA-V"):
            assert row["vs_ar_tokens_per_s"] == pytest.approx(row["tokens_per_s"] / rows[("AR", batch)]["tokens_per_s"])
    assert rows[("static", 1)]["tokens_per_forward"] <= 1.0  # steps == block size: one token per forward at most
    assert rows[("LLaDA-V", 1)]["nfe"] == 5 * 16  # a fixed canvas: one forward per position, every prompt
    for setting in settings:  # batching changes the speed, never the greedy answers
        assert rows[(setting, 1)]["accuracy"] == rows[(setting, 2)]["accuracy"]
        assert rows[(setting, 1)]["tokens"] == rows[(setting, 2)]["tokens"]
    headline = result["headline"]
    assert set(headline) == {"best_dynamic", "dynamic_vs_ar_tokens_per_s", "dynamic_vs_llada_tokens_per_s",
                             "dynamic_accuracy_drop_vs_static", "batch8_vs_batch1_tokens_per_s",
                             "speculative_vs_ar_tokens_per_s", "speculative_vs_ar_spread",
                             "speculative_setting", "speculative_tokens_per_forward", "speculative_mean_accepted",
                             "speculative_identical_to_verifier"}
    assert headline["speculative_identical_to_verifier"] is True
    assert headline["batch8_vs_batch1_tokens_per_s"] is None  # no batch size 8 in this run
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "| dynamic@0.9 | 1 |" in capsys.readouterr().out


def test_benchmark_of_a_causal_translation_adds_speculative_decoding_checked_against_its_causal_mode(tmp_path,
                                                                                                   capsys):
    """An untrained causal translation of minivl-ar with logit shift: its causal mode is minivl-ar itself, so the
    speculative answers must equal the causal mode's and score as the AR's."""
    cli.main(["convert", "minivl-ar", str(tmp_path / "causal"), "--block-size", "8", "--logit-shift",
              "--context-attention", "causal"])
    out = tmp_path / "bench.json"
    cli.main(f"bench --model {tmp_path / 'causal'} --source minivl-ar --samples 2 --repeats 2 --batch-sizes 1,2 "
             f"--thresholds 0.9 --max-new-tokens 16 --no-llada --tasks minivl:caption,count --device cpu "
             f"--speculative-copies 0,all --verifier minivl-ar --json {out}".split())
    result = json.loads(out.read_text())
    rows = {(r["setting"], r["batch_size"]): r for r in result["rows"]}
    assert result["settings"]["prompts"] == 4 and result["settings"]["tasks"] == ["caption", "count"]
    for name in ("speculative/c0", "speculative/all", "speculative/c0 by minivl-ar", "speculative/all by minivl-ar"):
        assert rows[(name, 1)]["accuracy"] == rows[("AR", 1)]["accuracy"] == rows[(name, 2)]["accuracy"], name
    by_ar = rows[("speculative/c0 by minivl-ar", 1)]
    assert by_ar["nfe"] > rows[("speculative/c0", 1)]["nfe"]  # the separate verifier's forwards count too
    assert rows[("speculative/c0", 1)]["nfe"] >= rows[("speculative/all", 1)]["nfe"]  # redrafts cost forwards
    headline = result["headline"]
    best = rows[(headline["speculative_setting"], 1)]
    assert headline["speculative_tokens_per_forward"] == best["tokens_per_forward"]
    assert headline["speculative_identical_to_verifier"] is True
    assert headline["speculative_mean_accepted"] >= 1 and headline["speculative_tokens_per_forward"] > 0
    low, high = headline["speculative_vs_ar_spread"]
    assert low <= headline["speculative_vs_ar_tokens_per_s"] <= high
    assert "every speculative row identical to its verifier's greedy answers: yes" in capsys.readouterr().out


CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|> {{ m['content'] }} <|im_end|> {% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>{% endif %}")


def text_translation(folder):
    """A tiny Llama with a chat template (folder/base), its causal translation (folder/causal) and a JSONL file of
    six questions of 1-5 words (folder/questions.jsonl)."""
    tokenizer = tiny_tokenizer(words=60)
    tokenizer.chat_template = CHAT_TEMPLATE
    tiny_causal_lm("llama", seed=3).save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    cli.main(["convert", str(folder / "base"), str(folder / "causal"), "--block-size", "4", "--logit-shift",
              "--context-attention", "causal"])
    questions = folder / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": " ".join(f"w{i + j}" for j in range(1 + i % 5)),
                                             "answer": "w7"}) + "\n" for i in range(6)))
    return questions


def test_benchmark_of_a_text_model_answers_held_out_prompts_or_a_task_file(tmp_path, capsys):
    """A text model (a causal translation of a tiny Llama, its source the AR row): SmolLM2's held-out prompts
    scored against the AR's answers, or a JSONL file of questions; speculative answers equal the causal mode's."""
    questions = text_translation(tmp_path)
    for tasks, prompts, described in (([], 4, "4 SmolLM2 held-out prompts"),
                                      (["--tasks", str(questions)], 5, f"5 questions of {questions}")):
        out = tmp_path / "bench.json"
        cli.main([*f"bench --model {tmp_path / 'causal'} --source {tmp_path / 'base'} --samples {prompts} --repeats 1 "
                  f"--batch-sizes 1,3 --thresholds 0.9 --max-new-tokens 8 --no-llada --device cpu --json {out}".split(),
                  *tasks])
        result = json.loads(out.read_text())
        assert result["settings"]["prompts"] == prompts and result["settings"]["described"].startswith(described)
        rows = {(r["setting"], r["batch_size"]): r for r in result["rows"]}
        assert rows[("speculative", 1)]["accuracy"] == rows[("AR", 1)]["accuracy"] == rows[("speculative", 3)]["accuracy"]
        assert result["headline"]["speculative_identical_to_verifier"] is True
        if not tasks:  # no reference answers: the AR's own are the truth
            assert rows[("AR", 1)]["accuracy"] == 100.0
    assert rows[("AR", 1)]["accuracy"] == 0.0  # an untrained model: no answer is "w7"
    assert "questions of" in capsys.readouterr().out


def test_lossless_checks_speculative_answers_against_the_verifiers_own_generate(tmp_path, capsys):
    """Single and batched (mixed prompt lengths), every ending exercised: end-of-turn or the length limit, and a
    stop string (w5 is in some answers of this untrained model, not in all)."""
    questions = text_translation(tmp_path)
    out = tmp_path / "lossless.json"
    cli.main(f"lossless --model {tmp_path / 'causal'} --tasks {questions} --batch-sizes 1,4 --stop-string w5 "
             f"--max-new-tokens 12 --json {out}".split())
    result = json.loads(out.read_text())
    assert result["lossless"] is True and result["prompts"] == 6
    assert [b["identical"] for b in result["batches"]] == [6, 6]
    shares = [b["accepted_at_least"] for b in result["batches"]]
    assert shares[0] == shares[1] and shares[0][0] == 1.0 and shares[0] == sorted(shares[0], reverse=True)
    assert result["endings"]["stop_string"] >= 1 and result["endings"]["stop"] + result["endings"]["length"] >= 1
    assert "lossless: yes, every row" in capsys.readouterr().out
    cli.main(["convert", str(tmp_path / "base"), str(tmp_path / "drafter"), "--block-size", "4", "--logit-shift"])
    cli.main(f"lossless --model {tmp_path / 'drafter'} --verifier {tmp_path / 'base'} --tasks {questions} "
             f"--batch-sizes 1,4 --stop-string w5 --max-new-tokens 12 --json {out}".split())
    result = json.loads(out.read_text())  # a block-causal drafter, its drafts checked by its source's generate
    assert result["lossless"] is True and [b["identical"] for b in result["batches"]] == [6, 6]
    assert result["verifier"] == str(tmp_path / "base")
    assert "diffusionvl convert" in cli_error(capsys, "lossless", "--model", str(tmp_path / "base"))  # an AR model
    cli.main(["convert", str(tmp_path / "base"), str(tmp_path / "block"), "--block-size", "4"])
    assert "context_attention='causal'" in cli_error(capsys, "lossless", "--model", str(tmp_path / "block"))


def test_eval_and_generate_with_a_verifier_answer_as_the_verifier_does(tmp_path, capsys):
    """`--verifier` (an AR model) on a block-causal drafter with logit shift: eval's predictions and generate's
    text are the AR's own; a verifier with another strategy is refused before any weight is read."""
    questions = text_translation(tmp_path)
    cli.main(["convert", str(tmp_path / "base"), str(tmp_path / "drafter"), "--block-size", "4", "--logit-shift"])
    logs = {}
    for name, extra in (("checked", ["--model", str(tmp_path / "drafter"), "--verifier", str(tmp_path / "base")]),
                        ("ar", ["--model", str(tmp_path / "base")])):
        cli.main(["eval", "--tasks", str(questions), "--max-new-tokens", "8", "--batch-size", "3", "--log",
                  str(tmp_path / f"{name}.jsonl"), *extra])
        logs[name] = [json.loads(line)["prediction"] for line in (tmp_path / f"{name}.jsonl").open()]
    assert logs["checked"] == logs["ar"] and any(logs["ar"])
    cli.main(["generate", str(tmp_path / "drafter"), "--prompt", "w1 w2", "--max-new-tokens", "8", "--json",
              "--verifier", str(tmp_path / "base")])
    checked = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cli.main(["generate", str(tmp_path / "base"), "--autoregressive", "--prompt", "w1 w2", "--max-new-tokens", "8",
              "--json"])
    assert checked["text"] == json.loads(capsys.readouterr().out.strip().splitlines()[-1])["text"]
    assert "drop one of them" in cli_error(capsys, "generate", str(tmp_path / "drafter"), "--prompt", "w1",
                                           "--verifier", str(tmp_path / "base"), "--strategy", "threshold")


def test_benchmark_options_are_checked_before_any_model_loads(capsys):
    for argv, message in (("--batch-sizes 0", "--batch-sizes must be positive"), ("--thresholds 1.5", "lie in"),
                          ("--samples 0", "--samples must be at least 1"), ("--batch-sizes x", "comma-separated"),
                          ("--tasks minivl:poems", "unknown MiniVL task(s) ['poems']"),
                          ("--speculative-copies x", "expected an integer or 'all'"),
                          ("--speculative-copies -1", "speculative_copies must be an integer >= 0")):
        assert message in cli_error(capsys, "bench", *argv.split())


def test_training_benchmark_checks_the_losses_and_writes_its_json(tmp_path, capsys):
    out = tmp_path / "bench_train.json"
    cli.main(f"bench-train --image-side 2 --hidden 32 --layers 1 --heads 2 --steps 2 --warmup 0 --json {out}".split())
    rows = json.loads(out.read_text())["rows"]
    assert [r["layout"] for r in rows] == ["full", "cheap"] and rows[0]["loss_checked_steps"] == 2
    assert rows[1]["saved_for_backward_mib"] < rows[0]["saved_for_backward_mib"]  # the cheap stream keeps less
    assert "Loss check: cheap == full on all 2 batches" in capsys.readouterr().out
    cli.main(f"bench-train --image-side 2 --hidden 32 --layers 1 --heads 2 --steps 2 --warmup 0 --draft-only "
             f"--json {out}".split())
    rows = json.loads(out.read_text())["rows"]
    assert [r["layout"] for r in rows] == ["one pass", "clean first"]
    assert rows[1]["saved_for_backward_mib"] < rows[0]["saved_for_backward_mib"]  # autograd keeps the noisy stream
    assert "Loss check: clean first == one pass on all 2 batches" in capsys.readouterr().out


def test_python_dash_m_runs_the_command_line():
    import subprocess
    import sys

    from diffusionvl import __version__

    done = subprocess.run([sys.executable, "-m", "diffusionvl", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"diffusionvl {__version__}"


def test_shape_benchmark_reports_its_keys_on_a_tiny_shape(tmp_path, capsys, monkeypatch):
    from diffusionvl.benchmarks import shapes as bench_shape

    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 1200}
    monkeypatch.setitem(bench_shape.SHAPES, "tiny", tiny)
    monkeypatch.setattr(bench_shape, "CONTEXTS", (64, 512, 2048))
    out = tmp_path / "shape.json"
    cli.main(f"bench --shape tiny --gen 16 --repeats 1 --batch-sizes 1,2 --block-size 4 --json {out}".split())
    result = json.loads(out.read_text())
    for key in ("step_vs_ar_step", "step_2048_vs_64", "dynamic_vs_ar_tokens_per_s", "batch2_vs_batch1_tokens_per_s"):
        assert result[key] > 0
    assert result["dtype"] == "torch.float32" and result["layers"] == 2 and result["sharpness"] == 64.0
    assert 0 < result["outside_forwards_share"] < 1
    for row in result["generation"].values():  # end-of-turn never wins: every decoder makes all its tokens
        assert row["ar"]["tokens"] == row["dynamic"]["tokens"]
    assert "| 2048 |" in capsys.readouterr().out
    assert "unknown --shape" in cli_error(capsys, "bench", "--shape", "qwen9")
