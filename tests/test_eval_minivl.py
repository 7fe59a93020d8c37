"""`diffusionvl eval` on MiniVL: the metrics, and the command end to end on tiny DiffusionVL and AR checkpoints."""

import json

import pytest

from diffusionvl.cli import main
from diffusionvl.evaluation.metrics import exact_match, token_f1
from diffusionvl.minivl.evaluate import F1_TASKS

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny matrices, one thread

KEYS = {"mean_exact_match", "tasks", "tokens_per_forward", "tokens_per_decoding_forward", "nfe", "tokens_per_s",
        "seconds", "model", "seed", "samples_per_task"}
TIMING = ("tokens_per_s", "seconds")


def test_exact_match_strips_whitespace_and_one_trailing_period():
    assert exact_match("7.", "7") == exact_match("7", "7.") == exact_match(" red ", "red") == 1.0
    assert exact_match(" 7 . ", "7") == 1.0
    assert exact_match("Red", "red") == exact_match("17", "7") == exact_match("7..", "7") == exact_match("", "7") == 0.0
    assert exact_match("a red circle at the top.", "a red circle at the top") == 1.0


def test_token_f1_is_squad_style_over_minivl_words():
    truth = "a red circle at the top left."  # a, red, circle, at, the, top, left, .  (8 tokens)
    prediction = "a blue circle at the top."  # a, blue, circle, at, the, top, .   (7 tokens, 6 shared)
    precision, recall = 6 / 7, 6 / 8
    assert token_f1(prediction, truth) == pytest.approx(2 * precision * recall / (precision + recall))
    assert token_f1(truth, truth) == 1.0
    assert token_f1("3071", "3017") == 1.0  # digits are tokens of their own; order does not count
    assert token_f1("1 1", "1") == pytest.approx(2 * 0.5 * 1 / 1.5)  # multiset: one 1 is shared
    assert token_f1("green", "red") == token_f1("", "red") == 0.0
    assert token_f1("", "") == 1.0


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(DiffusionVL folder, AR Qwen2.5-VL folder): a tiny random model and its block-diffusion translation."""
    from diffusionvl import DiffusionVL
    from diffusionvl.minivl.generator import TASKS, generate_mix
    from diffusionvl.minivl.models import MiniVLSize, build_model, build_processor, build_tokenizer

    samples = generate_mix(TASKS, "train", seed=0, count_per_task=20)
    tokenizer = build_tokenizer(text for s in samples for text in (s.question, s.answer))
    processor = build_processor(tokenizer)
    size = MiniVLSize(vision_depth=1, vision_hidden=32, vision_heads=2, hidden=64, layers=2, heads=4, kv_heads=2,
                      intermediate=128)
    model = build_model(tokenizer, size)
    root = tmp_path_factory.mktemp("eval")
    model.save_pretrained(root / "ar")
    processor.save_pretrained(root / "ar")
    DiffusionVL.from_autoregressive(model, processor, block_size=4).save_pretrained(root / "dvl")
    processor.save_pretrained(root / "dvl")
    return root / "dvl", root / "ar"


def run_json(capsys, folder, *extra) -> dict:
    main(["eval", "--model", str(folder), "--samples", "4", "--max-new-tokens", "8", "--json", *extra])
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1
    return json.loads(out)


def untimed(result: dict) -> dict:
    return {key: value for key, value in result.items() if key not in TIMING}


def test_eval_json_is_complete_deterministic_and_batch_invariant(checkpoints, capsys):
    dvl, _ = checkpoints
    result = run_json(capsys, dvl, "--batch-size", "4")
    assert set(result) == KEYS
    assert set(result["tasks"]) == {"caption", "count", "digits", "chart", "scene"}
    for task, score in result["tasks"].items():
        assert score["samples"] == 4 and 0 <= score["exact_match"] <= 1
        assert ("token_f1" in score) == (task in F1_TASKS)  # the long answers: caption, scene
    assert 0 <= result["mean_exact_match"] <= 1 and 0 <= result["tasks"]["caption"]["token_f1"] <= 1
    assert result["nfe"] > 0 and result["tokens_per_forward"] > 0 and result["seconds"] > 0
    assert (result["seed"], result["samples_per_task"], result["model"]) == (0, 4, str(dvl))
    assert untimed(run_json(capsys, dvl, "--batch-size", "4")) == untimed(result)
    single = run_json(capsys, dvl, "--batch-size", "1")
    assert {t: s["exact_match"] for t, s in single["tasks"].items()} == \
        {t: s["exact_match"] for t, s in result["tasks"].items()}
    assert single["tasks"]["caption"]["token_f1"] == result["tasks"]["caption"]["token_f1"]


def test_eval_runs_the_ar_source_checkpoint_and_prints_a_table(checkpoints, capsys):
    _, ar = checkpoints
    result = run_json(capsys, ar, "--tasks", "minivl:count,caption", "--batch-size", "3")
    assert set(result) == KEYS and list(result["tasks"]) == ["count", "caption"]
    assert 0 <= result["mean_exact_match"] <= 1 and result["nfe"] > 0
    assert result["tokens_per_forward"] == result["tokens_per_decoding_forward"] == 1.0  # AR: one per forward
    main(["eval", "--model", str(ar), "--tasks", "minivl:chart", "--samples", "2", "--max-new-tokens", "4"])
    table = capsys.readouterr().out
    assert "| chart | 2 |" in table and "mean exact match" in table and "tokens/forward" in table


@pytest.mark.parametrize("args, message", [
    (["--tasks", "minivl:nope"], "unknown task 'nope'"),
    (["--tasks", "vqa"], "unknown task suite"),
    (["--samples", "0"], "--samples must be a positive integer"),
])
def test_eval_user_errors_exit_2_with_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--model", str(tmp_path / "missing"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
