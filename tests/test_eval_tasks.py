"""`diffusionvl eval --tasks FILE.jsonl`: the loader and its errors, then the command end to end on the shipped
minivl-dvlm (with MiniVL images) and on a tiny text model."""

import json

import pytest
from conftest import CHAT_TEMPLATE, cli_error, tiny_causal_lm, tiny_tokenizer

from diffusionvl.cli import main
from diffusionvl.errors import DataError
from diffusionvl.evaluation.metrics import score
from diffusionvl.evaluation.tasks import CHOICE_INSTRUCTION, read_tasks

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny matrices, one thread

SUMMARY = {"score", "metrics", "samples", "tokens_per_forward", "tokens_per_decoding_forward", "nfe", "tokens_per_s",
           "seconds", "model", "tasks"}
LOG = {"id", "prompt", "prediction", "truth", "metric", "score", "tokens", "batch", "nfe"}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three MiniVL test images as PNG files in images/ (count, chart, caption), with their samples."""
    from diffusionvl.minivl.generator import generate

    folder = tmp_path_factory.mktemp("tasks")
    (folder / "images").mkdir()
    samples = [generate(task, "test", 0, 1)[0] for task in ("count", "chart", "caption")]
    for s in samples:
        s.image.save(folder / "images" / f"{s.task}.png")
    return folder, samples


def write_lines(path, *records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def test_reads_questions_with_their_defaults(images):
    folder, _ = images
    path = write_lines(
        folder / "ok.jsonl",
        {"question": "<image>\nHow many?", "answer": 3, "image": "images/count.png"},
        "",  # a blank line is skipped but counted
        {"question": "Capital of France?", "answer": "Paris", "choices": ["London", "Paris"], "id": 7},
        {"question": "Two?", "answer": 2.5, "images": [str(folder / "images/chart.png"), "images/caption.png"],
         "metric": "relaxed_accuracy"},
    )
    first, second, third = read_tasks(path)
    assert (first.id, first.prompt, first.answer, first.metric, first.line) == ("line-1", "How many?", "3",
                                                                                 "exact_match", 1)
    assert first.images == (str(folder / "images" / "count.png"),)  # relative to the file's folder
    assert second.prompt == f"Capital of France?\nA. London\nB. Paris\n{CHOICE_INSTRUCTION}"
    assert (second.id, second.metric, second.choices, second.line) == ("7", "multiple_choice", ("London", "Paris"), 3)
    assert (third.answer, third.metric, len(third.images)) == ("2.5", "relaxed_accuracy", 2)
    assert [q.metric for q in read_tasks(path, "token_f1")] == ["token_f1", "token_f1", "relaxed_accuracy"]


def bad_image(folder):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return "broken.png"


@pytest.mark.parametrize("line, message", [
    ('{"question": "Hi?", "answer": "x"', "not valid JSON"),
    ('["Hi?", "x"]', "one JSON object with 'question' and 'answer'"),
    ({"answer": "x"}, "missing 'question'"),
    ({"question": "Hi?"}, "missing 'answer'"),
    ({"question": "Hi?", "answer": True}, "missing 'answer' (a string or a number)"),
    ({"question": "Hi?", "answer": "x", "metric": "bleu"}, "unknown metric 'bleu'; use one of exact_match"),
    ({"question": "Hi?", "answer": "x", "metric": ["yes_no"]}, "unknown metric ['yes_no']"),
    ({"question": "Hi?", "answer": "x", "image": "nowhere.png"}, "image file not found"),
    ({"question": "Hi?", "answer": "x", "image": bad_image}, "cannot be decoded"),
    ({"question": "Hi?", "answer": "x", "image": "a.png", "images": ["a.png"]}, "not both"),
    ({"question": "Hi?", "answer": "x", "images": "a.png"}, "'images' must be a list"),
    ({"question": "<image> <image> Hi?", "answer": "x"}, "2 <image> placeholder(s) but 0 image(s)"),
    ({"question": "Hi?", "answer": "x", "choices": ["only one"]}, "'choices' must be a list of at least 2"),
    ({"question": "Hi?", "answer": "C", "choices": ["a", "b"]}, "not one of the letters A-B or a choice's text"),
    ({"question": "Hi?", "answer": "maybe", "metric": "yes_no"}, "a yes_no answer is 'yes' or 'no'"),
    ({"question": "Hi?", "answer": "x", "id": "line-1"}, "already used on line 1"),
    ({"question": "Hi?", "answer": "x", "id": [1]}, "'id' must be a string or an integer"),
])
def test_loader_errors_name_the_file_and_line(tmp_path, line, message):
    if isinstance(line, dict) and callable(line.get("image")):
        line = {**line, "image": line["image"](tmp_path)}
    path = write_lines(tmp_path / "t.jsonl", {"question": "Fine?", "answer": "yes"}, line)
    with pytest.raises(DataError) as error:
        read_tasks(path)
    assert f"{path}:2: " in str(error.value) and message in str(error.value)


def test_loader_refuses_an_empty_file_a_missing_file_and_an_unknown_default_metric(tmp_path):
    empty = write_lines(tmp_path / "empty.jsonl", "", "  ")
    with pytest.raises(DataError, match="holds no questions; write one JSON object per line"):
        read_tasks(empty)
    with pytest.raises(DataError, match="task file not found"):
        read_tasks(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="unknown --metric 'bleu'"):
        read_tasks(write_lines(tmp_path / "t.jsonl", {"question": "Q?", "answer": "a"}), "bleu")


def test_the_command_checks_the_file_before_the_model(tmp_path, capsys):
    path = write_lines(tmp_path / "t.jsonl", {"question": "Q?", "answer": "a"}, {"question": "Q?"})
    err = cli_error(capsys, "eval", "--tasks", path, "--model", tmp_path / "no-model")  # never reached
    assert f"{path}:2: missing 'answer'" in err
    err = cli_error(capsys, "eval", "--tasks", tmp_path / "absent.jsonl")
    assert "task file not found" in err
    err = cli_error(capsys, "eval", "--tasks", path, "--log", tmp_path / "no" / "log.jsonl")
    assert "--log" in err and "folder does not exist" in err
    assert "--metric applies to a JSONL task file" in cli_error(capsys, "eval", "--metric", "yes_no")


def direct_answers(samples, max_new_tokens: int) -> list[str]:
    """minivl-dvlm's answers to MiniVL samples (their PIL images), one at a time, as MiniVL's eval asks them."""
    from diffusionvl.decoding.config import DecodingConfig
    from diffusionvl.inference import answer, chat_inputs, load

    model, processor = load("minivl-dvlm")
    config = DecodingConfig(max_new_tokens=max_new_tokens)
    return [answer(model, processor, chat_inputs(processor, [s.question], [[s.image]]), config).texts[0]
            for s in samples]


def test_minivl_dvlm_end_to_end_with_log_and_summary(images, capsys):
    folder, (count, chart, caption) = images
    path = write_lines(
        folder / "mixed.jsonl",
        {"question": count.question, "answer": count.answer, "image": "images/count.png", "id": "count"},
        {"question": chart.question, "answer": chart.answer, "image": "images/chart.png",
         "metric": "relaxed_accuracy"},
        {"question": caption.question, "answer": caption.answer, "image": "images/caption.png", "metric": "token_f1"},
        {"question": "Is there a shape?", "answer": "yes", "image": "images/count.png", "metric": "yes_no"},
        {"question": "Which colour?", "answer": "A", "choices": ["red", "blue"], "image": "images/chart.png"},
    )
    log = folder / "log.jsonl"
    main(["eval", "--tasks", str(path), "--batch-size", "2", "--max-new-tokens", "16", "--log", str(log), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert set(result) == SUMMARY and result["samples"] == 5
    assert (result["model"], result["tasks"]) == ("minivl-dvlm", str(path))
    assert set(result["metrics"]) == {"exact_match", "relaxed_accuracy", "token_f1", "yes_no", "multiple_choice"}
    assert all(m["samples"] == 1 and 0 <= m["score"] <= 1 for m in result["metrics"].values())
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [set(row) for row in rows] == [LOG] * 5 and rows[0]["id"] == "count" and rows[1]["id"] == "line-2"
    assert [row["batch"] for row in rows] == [0, 0, 1, 1, 2]
    assert sum(row["nfe"] for row in rows) == pytest.approx(result["nfe"])  # the batch's forwards, shared
    assert result["score"] == pytest.approx(sum(row["score"] for row in rows) / 5)
    for row, metric in zip(rows, ["exact_match", "relaxed_accuracy", "token_f1", "yes_no", "multiple_choice"]):
        assert row["metric"] == metric and row["tokens"] > 0
        assert row["score"] == score(metric, row["prediction"], row["truth"], ["red", "blue"] * (metric ==
                                                                                                "multiple_choice"))
    assert [row["prediction"] for row in rows[:3]] == direct_answers([count, chart, caption], 16)
    main(["eval", "--tasks", str(path), "--samples", "2", "--max-new-tokens", "8"])
    table = capsys.readouterr().out
    assert "| exact_match | 1 |" in table and "mean score" in table and "over 2 samples" in table


def test_minivl_eval_writes_a_log_too(tmp_path, capsys):
    log = tmp_path / "minivl.jsonl"
    main(["eval", "--tasks", "minivl:count,caption", "--samples", "2", "--max-new-tokens", "8", "--log", str(log),
          "--json"])
    result = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 4 and all(LOG <= set(row) for row in rows)
    assert ["token_f1" in row for row in rows] == [False, False, True, True]
    assert sum(row["score"] for row in rows[:2]) / 2 == result["tasks"]["count"]["exact_match"]
    assert sum(row["nfe"] for row in rows) == pytest.approx(result["nfe"])


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A tiny text DiffusionVL with a word-level chat tokenizer (no image processor)."""
    from diffusionvl import DiffusionVL

    folder = tmp_path_factory.mktemp("text-model")
    tokenizer = tiny_tokenizer(words=60)
    tokenizer.chat_template = CHAT_TEMPLATE
    DiffusionVL.from_autoregressive(tiny_causal_lm(vocab_size=63), tokenizer, block_size=4).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_text_only_file_runs_on_a_text_model_and_images_are_refused(text_model, images, tmp_path, capsys):
    path = write_lines(tmp_path / "text.jsonl", {"question": "w1 w2 w3", "answer": "w4"},
                       {"question": "w5", "answer": "yes", "metric": "yes_no"}, {"question": "w6", "answer": 7})
    main(["eval", "--tasks", str(path), "--model", str(text_model), "--max-new-tokens", "4", "--metric",
          "token_f1", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 3 and set(result["metrics"]) == {"token_f1", "yes_no"}
    assert result["metrics"]["token_f1"]["samples"] == 2 and result["nfe"] > 0
    pictured = write_lines(tmp_path / "pictured.jsonl", {"question": "w1", "answer": "w2"},
                           {"question": "w1", "answer": "w2", "image": str(images[0] / "images" / "count.png")})
    err = cli_error(capsys, "eval", "--tasks", pictured, "--model", text_model)
    assert f"{pictured}:2: this question (and maybe others) has images" in err and "text model" in err
