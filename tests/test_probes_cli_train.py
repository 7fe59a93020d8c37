"""The `diffusionvl train` rows of the bad-inputs probes, run as real processes (the messages, skip counts and
resume results are checked in-process by tests/test_probes_training.py; the SIGKILL rows by tests/test_train.py).

Each case: an error row exits with status 2 and ends its stderr with one `error: ...` line (and leaves the output
folder alone), an OK row exits with 0 and prints the expected summary; no row may print a traceback.
"""

import json
import shutil

import pytest
from conftest import CHAT_TEMPLATE, tiny_tokenizer, write_image
from probes import build_checkpoints
from test_probes_cli import OK, run_row
from test_train import bomb_png, corrupt_png, image_record

TEXT = {"id": "text", "conversations": [{"from": "human", "value": "w5 w6"}, {"from": "gpt", "value": "w20"}]}
GOOD = [image_record(f"good{i}", f"{i}.png") for i in range(3)] + [TEXT]
LONG = {"id": "long", "conversations": [{"from": "human", "value": " ".join(["w1"] * 700)},
                                        {"from": "gpt", "value": "w2"}]}
# every kind of record a run must skip, and the records the probes saw train without trouble
SKIPPED = [image_record("gone", "missing.png"), image_record("aspect", "aspect.png"), image_record("zero", "zero.png"),
           image_record("bomb", "bomb.png"), image_record("chunk", "corrupt.png"), LONG,
           {**image_record("two", "0.png"), "conversations": [{"from": "human", "value": "<image> <image> w1"},
                                                              {"from": "gpt", "value": "w2"}]}]
ACCEPTED = [{"id": "gpt-only", "conversations": [{"from": "gpt", "value": "w3"}]},
            {"id": "empty-answer", "conversations": [{"from": "human", "value": "w3"}, {"from": "gpt", "value": ""}]},
            {**image_record("image-in-answer", "1.png"), "conversations": [{"from": "human", "value": "w3"},
                                                                         {"from": "gpt", "value": "<image> w4"}]}]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Checkpoints (a VLM, AR sources) and an image folder with good and broken files."""
    root = tmp_path_factory.mktemp("train-cli")
    fx = build_checkpoints(root / "checkpoints", tmp_path_factory.getbasetemp() / "probe-images")
    images = root / "images"
    images.mkdir()
    for i in range(3):
        write_image(images / f"{i}.png", 56, 56, seed=i)
    write_image(images / "aspect.png", 2, 1000)
    corrupt_png(images / "corrupt.png")
    (images / "zero.png").write_bytes(b"")
    shutil.copy(bomb_png(tmp_path_factory), images / "bomb.png")
    fx.images, fx.root = images, root
    return fx


def data(tmp, content, name="data.json"):
    """A data file in the case's folder: records (JSON or JSONL by the name) or raw bytes."""
    path = tmp / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(record) + "\n" for record in content))
    else:
        path.write_text(json.dumps(content))
    return path


def train(ws, tmp, records=GOOD, *flags, model=None, name="data.json", folder=None, output=None):
    return ["train", "--data", data(tmp, records, name), "--image-folder", folder or ws.images,
            "--model", model or ws.vl, "--output-dir", output or tmp / "run", "--batch-size", "2",
            "--max-steps", "2", "--logging-steps", "1", "--save-steps", "2", *flags]


def converted_text_lm(ws, tmp):
    source = shutil.copytree(ws.ar_text, tmp / "text-ar")
    chat = tiny_tokenizer(words=60)
    chat.chat_template = CHAT_TEMPLATE
    chat.save_pretrained(source)
    return [["convert", source, tmp / "text-dvl", "--block-size", "4"],
            train(ws, tmp, [TEXT, TEXT], model=tmp / "text-dvl")]


# (rows, description, argv (or several, run in order), exit status, regex of the error line or of the output)
CASES = [
    ((88,), "a baseline run", lambda ws, tmp: train(ws, tmp), OK, r"done: 2 steps, 0 records skipped"),
    ((89,), "JSONL with a malformed line 4", lambda ws, tmp: train(
        ws, tmp, (json.dumps(TEXT) + "\n").encode() * 3 + b'{"id": 1,,}\n',
        name="bad.jsonl"), 2, r"bad\.jsonl:4: not valid JSON"),
    ((90,), "empty JSONL", lambda ws, tmp: train(ws, tmp, b"", name="empty.jsonl"), 2, "holds no records"),
    ((91,), "[] with --no-group-by-length", lambda ws, tmp: train(ws, tmp, [], "--no-group-by-length"), 2,
     "holds no records"),
    ((92,), "zero-byte .json", lambda ws, tmp: train(ws, tmp, b""), 2, r"data\.json:1: not valid JSON"),
    ((93,), "a record without a gpt turn", lambda ws, tmp: train(
        ws, tmp, [TEXT, {"conversations": [{"from": "human", "value": "w1"}]}]), 2, "has no 'gpt' turn"),
    ((94, 96, 98, 99, 100, 101, 102, 103, 105), "every kind of broken record among good ones, and odd good ones",
     lambda ws, tmp: train(ws, tmp, GOOD + SKIPPED + ACCEPTED, "--max-steps", "-1", "--epochs", "1"), OK,
     r"done: \d+ steps, 7 records skipped \(1 aspect ratio, 1 image count, 1 missing, 1 too large, 1 too long, "
     r"2 undecodable\)"),
    ((95,), "data file missing", lambda ws, tmp: ["train", "--data", tmp / "none.json", "--model", ws.vl,
                                                  "--output-dir", tmp / "run"], 2, "data file not found"),
    ((97,), "every image missing", lambda ws, tmp: train(ws, tmp, [image_record("a", "nope1.png"),
                                                                  image_record("b", "nope2.png")]), 2,
     "none of the 2 images"),
    ((104,), "a .json holding an object", lambda ws, tmp: train(ws, tmp, {"records": GOOD}), 2, "one array of records"),
    ((106,), "invalid UTF-8", lambda ws, tmp: train(ws, tmp, b'[\n{"id": "\xff"}\n]'), 2, r"data\.json:2: not valid UTF-8"),
    ((107,), "--image-folder missing", lambda ws, tmp: train(ws, tmp, folder=tmp / "nowhere"), 2, "does not exist"),
    ((110,), "--resume on a finished run", lambda ws, tmp: [train(ws, tmp), train(ws, tmp, GOOD, "--resume")], OK,
     "nothing to do"),
    ((112,), "--model an untranslated Qwen2.5-VL", lambda ws, tmp: train(ws, tmp, model=ws.ar_vl), 2,
     "diffusionvl convert"),
    ((113,), "--model an AR qwen2", lambda ws, tmp: train(ws, tmp, [TEXT], model=ws.ar_text), 2, "diffusionvl convert"),
    ((114,), "--model missing", lambda ws, tmp: train(ws, tmp, model=tmp / "nomodel"), 2, "model folder not found"),
    ((115,), "train the convert output of a text LM", converted_text_lm, OK, r"done: 2 steps"),
    ((115,), "a text LM whose tokenizer has no chat template", lambda ws, tmp: [
        ["convert", ws.ar_text, tmp / "text-dvl", "--block-size", "4"], train(ws, tmp, [TEXT], model=tmp / "text-dvl")],
     2, "has no chat template"),
    ((116,), "--batch-size 0", lambda ws, tmp: train(ws, tmp, GOOD, "--batch-size", "0"), 2,
     "--batch-size must be a positive number"),
    ((117,), "--max-steps 0 --epochs 0", lambda ws, tmp: train(ws, tmp, GOOD, "--max-steps", "0", "--epochs", "0"), OK,
     "done: 0 steps"),
    ((118,), "--output-dir an existing file", lambda ws, tmp: train(ws, tmp, output=ws.images / "0.png"), 2,
     "is an existing file"),
    ((119,), "--learning-rate -1", lambda ws, tmp: train(ws, tmp, GOOD, "--learning-rate", "-1"), 2,
     "--learning-rate must be a positive number"),
]
ROWS = sorted({row for rows, *_ in CASES for row in rows})


@pytest.mark.parametrize("rows,description,argv,status,expected", CASES,
                         ids=["row-" + "-".join(f"{r:03d}" for r in rows) + f" {what}" for rows, what, *_ in CASES])
def test_train_cli_row(rows, description, argv, status, expected, ws, tmp_path):
    run_row(argv(ws, tmp_path), status, expected)
    if status != OK:
        assert not (tmp_path / "run").exists(), "a refused run must not create its output folder"
