"""Rows 88-119 of the bad-inputs probes (/work/shared/probes/bad-inputs.md): `diffusionvl train` on bad data,
bad options, bad folders and faults. Each row is a regression case, OK rows included: the clear error it must
give (type and message), the records it must skip (by reason), or the result it must reach."""

import json
import shutil
from pathlib import Path
from unittest import mock

import pytest
import torch
from conftest import (
    CHAT_TEMPLATE,
    MASK_ID,
    tiny_causal_lm,
    tiny_qwen_vl,
    tiny_tokenizer,
    tiny_vl_processor,
    write_image,
)
from test_train import Crash, bomb_png, corrupt_png, image_record, losses

from diffusionvl import DiffusionVL
from diffusionvl.errors import CheckpointLayoutError, DataError, DiffusionVLError
from diffusionvl.loading import load_model
from diffusionvl.training.train import TrainingConfig, train

GOOD = [image_record(f"good{i}", f"{i}.png") for i in range(4)] + [
    {"id": "text", "conversations": [{"from": "human", "value": "w5 w6"}, {"from": "gpt", "value": "w20"}]}]


def text_record(words: int, answer: str = "w2") -> dict:
    return {"conversations": [{"from": "human", "value": " ".join(f"w{i % 50}" for i in range(words))},
                              {"from": "gpt", "value": answer}]}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """One image folder (good and broken files) and one tiny DiffusionVL checkpoint for every row."""
    images = tmp_path_factory.mktemp("images")
    for i in range(4):
        write_image(images / f"{i}.png", 56, 84 if i % 2 else 56, seed=i)
    write_image(images / "aspect.png", 2, 1000)  # aspect ratio 500
    corrupt_png(images / "corrupt.png")
    (images / "zero.png").write_bytes(b"")
    shutil.copy(bomb_png(tmp_path_factory), images / "bomb.png")
    checkpoint = tmp_path_factory.mktemp("dvl")
    processor = tiny_vl_processor()
    DiffusionVL.from_autoregressive(tiny_qwen_vl(), processor, mask_token_id=MASK_ID, block_size=4).save_pretrained(
        checkpoint)
    processor.save_pretrained(checkpoint)
    return images, checkpoint


class Workspace:
    """One case's scratch folder: data files, the run's output folder, training through Python or the CLI."""

    def __init__(self, tmp_path: Path, assets, capsys):
        self.tmp, (self.images, self.checkpoint), self.capsys = tmp_path, assets, capsys
        self.output, self.data = tmp_path / "run", self.write(GOOD)

    def write(self, records, name: str = "data.json") -> Path:
        return self.raw(name, json.dumps(records, indent=1).encode())

    def raw(self, name: str, content: bytes) -> Path:
        (self.tmp / name).write_bytes(content)
        return self.tmp / name

    def train(self, *extra, callbacks=None, **options):
        """Train on GOOD plus `extra` records; by default one epoch of two steps, which fetches every record."""
        data = self.write(GOOD + list(extra)) if extra else self.data
        values = dict(data=str(data), model=str(self.checkpoint), output_dir=str(self.output),
                      image_folder=str(self.images), batch_size=4, max_steps=-1, epochs=1, save_steps=2,
                      logging_steps=1, learning_rate=1e-3)
        return train(TrainingConfig(**{**values, **{k: str(v) if isinstance(v, Path) else v
                                                    for k, v in options.items()}}), callbacks)

    def cli(self, *flags) -> tuple[int, str, str]:
        """`diffusionvl train` with this workspace's data, model and output: (exit status, stdout, stderr)."""
        from diffusionvl import cli

        argv = ["train", "--data", str(self.data), "--image-folder", str(self.images), "--model",
                str(self.checkpoint), "--output-dir", str(self.output), "--max-steps", "2", *flags]
        try:
            cli.main(argv)
            code = 0
        except SystemExit as error:
            code = error.code
        out = self.capsys.readouterr()
        return code, out.out, out.err

    def run_json(self) -> dict:
        return json.loads((self.output / "run.json").read_text())


def untouched(w: Workspace) -> None:
    assert not w.output.exists(), "a pre-flight error must leave the output folder alone"


def fails(kind, pattern: str, then=untouched):
    def check(w, setup):
        with pytest.raises(kind, match=pattern):
            setup(w)
        then(w)
    return check


def skips(**reasons):
    """Trains to the end, with exactly these records skipped (reason keys with '_' for ' ')."""
    def check(w, setup):
        setup(w)
        run = w.run_json()
        assert run["skipped_by_reason"] == {k.replace("_", " "): n for k, n in reasons.items()}
        assert run["skipped_records"] == sum(reasons.values())
    return check


def works(then):
    return lambda w, setup: then(w, setup(w))


def loads(folder: Path) -> None:
    assert load_model(folder) is not None


def resumed_after_a_crash(w: Workspace):
    """Row 108, lighter: the Crash callback (a KeyboardInterrupt in step 3) stands in for SIGKILL."""
    w.train(max_steps=4, output_dir=w.tmp / "whole")
    with pytest.raises(KeyboardInterrupt):
        w.train(max_steps=4, callbacks=[Crash()])
    w.train(max_steps=4, resume=True)


def same_losses_logged_once(w: Workspace, _) -> None:
    steps = [json.loads(line)["step"] for line in (w.output / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4]
    expected, resumed = losses(w.tmp / "whole"), losses(w.output)
    assert all(resumed[step] == pytest.approx(expected[step], abs=1e-6) for step in (3, 4))


def failing_save(error, step: int = 2):
    """torch.save raising `error` inside the staging folder of checkpoint-`step` (after the folder appears)."""
    real = torch.save

    def save(obj, file, *args, **kwargs):
        if f"checkpoint-{step}" in str(file):
            raise error
        return real(obj, file, *args, **kwargs)

    return mock.patch.object(torch, "save", save)


def save_interrupted_then_resumed(w: Workspace):
    with failing_save(KeyboardInterrupt("killed during the save")), pytest.raises(KeyboardInterrupt):
        w.train(max_steps=2, save_steps=1)
    assert (w.output / ".staging" / "checkpoint-2").is_dir() and not (w.output / "checkpoint-2").exists()
    loads(w.output / "checkpoint-1")
    return w.train(max_steps=2, save_steps=1, resume=True)


def complete_checkpoint(w: Workspace, trainer) -> None:
    assert trainer.state.global_step == 2 and not (w.output / ".staging" / "checkpoint-2").exists()
    loads(w.output / "checkpoint-2")


def resumed_when_finished(w: Workspace):
    w.train(max_steps=2)
    before = {name: (w.output / name).read_bytes() for name in ("run.json", "metrics.jsonl")}
    return w.train(max_steps=2, resume=True), before


def nothing_done(w: Workspace, result) -> None:
    trainer, before = result
    assert trainer.finished.startswith("nothing to do: ") and "is at step 2 of 2; the run is already finished" in \
        trainer.finished
    assert sorted(p.name for p in w.output.glob("checkpoint-*")) == ["checkpoint-2"]
    assert all((w.output / name).read_bytes() == content for name, content in before.items())


def disk_full(error):
    def setup(w: Workspace):
        with failing_save(error):
            w.train(max_steps=2, save_steps=1)
    return setup


def first_checkpoint_intact(w: Workspace) -> None:
    loads(w.output / "checkpoint-1")
    assert not (w.output / "checkpoint-2").exists() and not (w.output / ".staging" / "checkpoint-2").exists()


def saved(model):
    def setup(w: Workspace):
        model().save_pretrained(w.tmp / "model")
        return w.train(model=w.tmp / "model")
    return setup


def converted_text_lm(w: Workspace) -> Path:
    """`diffusionvl convert` of a text LM: the folder gets a tokenizer and no image processor."""
    from diffusionvl.training.convert import convert

    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tiny_causal_lm().save_pretrained(w.tmp / "ar")
    tokenizer.save_pretrained(w.tmp / "ar")
    convert(w.tmp / "ar", w.tmp / "converted", block_size=4, mask_token_id=MASK_ID)
    return w.tmp / "converted"


def text_lm_trained(w: Workspace):
    model = converted_text_lm(w)
    w.data = w.write([text_record(3), text_record(5, "w7 w8")])
    return w.train(model=model, image_folder=None, max_steps=2, batch_size=1)


def generates_from_checkpoint(w: Workspace, trainer) -> None:
    from diffusionvl import cli

    saved = w.output / "checkpoint-2"
    assert trainer.state.global_step == 2 and (saved / "tokenizer.json").is_file()
    cli.main(["generate", str(saved), "--prompt", "w1 w2", "--max-new-tokens", "4", "--steps", "2"])
    assert "tokens/forward" in w.capsys.readouterr().err


def output_is_file(w: Workspace):
    w.raw("run", b"keep")
    w.output = w.tmp / "run"
    return w.train()


def file_kept(w: Workspace) -> None:
    assert w.output.read_bytes() == b"keep"


def cli_says(code: int, text: str):
    def check(w: Workspace, result) -> None:
        assert result[0] == code and text in result[1] + result[2], result
    return check


def frozen(w: Workspace):
    return w.train(train_projector=False, train_language=False)


CASES = [
    (88, "baseline, 4 steps", lambda w: w.train(max_steps=4), works(lambda w, t: loads(w.output / "checkpoint-4"))),
    (89, "JSONL with a malformed line 4", lambda w: w.train(data=w.raw("bad.jsonl", b"\n".join(
        [json.dumps(GOOD[4]).encode()] * 3 + [b"{bad"]))), fails(DataError, r"bad\.jsonl:4: not valid JSON")),
    (90, "data is []", lambda w: w.train(data=w.raw("e.json", b"[]")), fails(DataError, "holds no records")),
    (90, "empty .jsonl", lambda w: w.train(data=w.raw("e.jsonl", b"\n")), fails(DataError, "holds no records")),
    (91, "empty data, --no-group-by-length", lambda w: w.train(data=w.raw("e.json", b"[]"), group_by_length=False),
     fails(DataError, "holds no records")),
    (92, "zero-byte .json", lambda w: w.train(data=w.raw("zero.json", b"")),
     fails(DataError, r"zero\.json:1: not valid JSON")),
    (93, "a record with no gpt turn", lambda w: w.train(data=w.raw("noasst.jsonl", b"\n".join(
        [json.dumps(GOOD[4]).encode()] * 2 + [b'{"conversations": [{"from": "human", "value": "w1"}]}']))),
     fails(DataError, r"noasst\.jsonl:3: the conversation has no 'gpt' turn")),
    (94, "only a gpt turn; an empty answer", lambda w: w.train(
        {"conversations": [{"from": "gpt", "value": "w1 w2"}]}, text_record(2, "")), skips()),
    (95, "data file missing", lambda w: w.train(data=w.tmp / "none.json"),
     fails(FileNotFoundError, "data file not found")),
    (96, "an image missing", lambda w: w.train(image_record("gone", "missing.png")), skips(missing=1)),
    (97, "every image missing", lambda w: w.train(data=w.write([image_record(n, n) for n in ("x.png", "y.png")])),
     fails(DataError, r"none of the 2 images of .* exists under .*x\.png is missing")),
    (97, "no usable record", lambda w: w.train(data=w.write([image_record(n, n) for n in ("bomb.png", "zero.png")])),
     fails(DataError, r"no usable record among the 2 records \(1 too large, 1 undecodable\)")),
    (98, "a 400-Mpx PNG", lambda w: w.train(image_record("bomb", "bomb.png")), skips(too_large=1)),
    (99, "aspect-500 and zero-byte images", lambda w: w.train(image_record("a", "aspect.png"),
                                                               image_record("z", "zero.png")),
     skips(aspect_ratio=1, undecodable=1)),
    (100, "a PNG with a corrupt chunk", lambda w: w.train(image_record("c", "corrupt.png")), skips(undecodable=1)),
    (101, "longer than --max-length", lambda w: w.train(text_record(200), max_length=100), skips(too_long=1)),
    (102, "longer than the model's 512 positions", lambda w: w.train(text_record(600)), skips(too_long=1)),
    (103, "2 <image> for 1 image", lambda w: w.train({**image_record("two", "0.png"), "conversations": [
        {"from": "human", "value": "<image> <image> w1"}, {"from": "gpt", "value": "w2"}]}), skips(image_count=1)),
    (104, ".json holding an object", lambda w: w.train(data=w.raw("o.json", b'{"a": 1}')),
     fails(DataError, r"o\.json: a \.json data file holds one array")),
    (104, "a turn value that is a list", lambda w: w.train(data=w.raw("l.json", b'[\n{"conversations": [{"from": '
                                                                     b'"gpt", "value": ["w1"]}]}\n]')),
     fails(DataError, r"l\.json:2: every turn needs")),
    (104, "from: system", lambda w: w.train(data=w.raw("s.json", b'[\n{"conversations": [{"from": "system", '
                                                           b'"value": "w1"}]}\n]')),
     fails(DataError, r"s\.json:2: every turn needs 'from'")),
    (105, "<image> in the gpt turn", lambda w: w.train({"image": "0.png", "conversations": [
        {"from": "human", "value": "w1"}, {"from": "gpt", "value": "<image> w2"}]}), skips()),
    (105, "<image> in the gpt turn, no image", lambda w: w.train({"conversations": [
        {"from": "human", "value": "w1"}, {"from": "gpt", "value": "<image> w2"}]}), skips()),
    (105, "<image> in both turns, one image", lambda w: w.train({"image": "0.png", "conversations": [
        {"from": "human", "value": "<image> w1"}, {"from": "gpt", "value": "w2 <image>"}]}), skips()),
    (106, "invalid UTF-8", lambda w: w.train(data=w.raw("u.json", b'[\n{"id": "\xff"}\n]')),
     fails(DataError, r"u\.json:2: not valid UTF-8 \(byte 0xff\)")),
    (107, "--image-folder does not exist", lambda w: w.train(image_folder=w.tmp / "nope"),
     fails(DataError, r"--image-folder .*nope does not exist")),
    (107, "--image-folder without the images", lambda w: w.train(image_folder=w.tmp),
     fails(DataError, "none of the 4 images")),
    (108, "killed mid-run, then --resume", resumed_after_a_crash, works(same_losses_logged_once)),
    (109, "killed during a save, then --resume", save_interrupted_then_resumed, works(complete_checkpoint)),
    (110, "--resume on a finished run", resumed_when_finished, works(nothing_done)),
    (111, "disk full (ENOSPC)", disk_full(OSError(28, "No space left on device")),
     fails(DiffusionVLError, r"no space left on the device while saving checkpoint-2 .*checkpoint-1\) is intact",
           then=first_checkpoint_intact)),
    (111, "disk full (torch 'unexpected pos')", disk_full(RuntimeError("[enforce fail at inline_container.cc:672] . "
                                                                       "unexpected pos 291136 vs 291028")),
     fails(DiffusionVLError, "no space left on the device", then=first_checkpoint_intact)),
    (112, "--model is a Qwen2.5-VL, not converted", saved(tiny_qwen_vl),
     fails(CheckpointLayoutError, r"'qwen2_5_vl' checkpoint, not a DiffusionVL one.*diffusionvl convert")),
    (113, "--model is a plain AR qwen2", saved(tiny_causal_lm), fails(CheckpointLayoutError, "diffusionvl convert")),
    (114, "--model folder missing", lambda w: w.train(model=w.tmp / "nomodel"),
     fails(CheckpointLayoutError, "model folder not found")),
    (115, "converted text LM, text data", text_lm_trained, works(generates_from_checkpoint)),
    (115, "converted text LM, image data", lambda w: w.train(model=converted_text_lm(w)),
     fails(DiffusionVLError, "this checkpoint has no image processor; 4 records")),
    (116, "--stage pretrain", lambda w: w.train(stage="pretrain"), fails(DiffusionVLError, "stage must be")),
    (116, "--batch-size 0", lambda w: w.train(batch_size=0),
     fails(DiffusionVLError, "--batch-size must be a positive")),
    (116, "--lora-targets nonexistent_proj", lambda w: w.train(lora_rank=2, lora_targets="nonexistent_proj"),
     fails(ValueError, "nonexistent_proj")),
    (116, "every part frozen", frozen, fails(ValueError, "nothing to train")),
    (117, "--max-steps 0 --epochs 0", lambda w: w.cli("--max-steps", "0", "--epochs", "0"),
     works(cli_says(0, "done: 0 steps, 0 records skipped"))),
    (117, "--bf16 on, on a CPU", lambda w: w.train(max_steps=1, bf16="on"),
     works(lambda w, t: loads(w.output / "checkpoint-1"))),
    (118, "--output-dir under /proc", lambda w: w.train(output_dir="/proc/diffusionvl_out"),
     fails(DiffusionVLError, "--output-dir /proc/diffusionvl_out: cannot create files in /proc")),
    (118, "--output-dir is an existing file", output_is_file,
     fails(DiffusionVLError, "is an existing file, not a folder", then=file_kept)),
    (118, "--output-dir under a file", lambda w: w.train(output_dir=w.raw("f", b"x") / "run"),
     fails(DiffusionVLError, r"f/run is under .*f, which is a file, not a folder")),
    (119, "--learning-rate -1", lambda w: w.cli("--learning-rate", "-1"),
     works(cli_says(2, "error: --learning-rate must be a positive number, got -1.0"))),
    (119, "--learning-rate nan", lambda w: w.train(learning_rate=float("nan")),
     fails(DiffusionVLError, "--learning-rate must be a positive number, got nan")),
    (119, "--warmup-steps -1", lambda w: w.train(warmup_steps=-1),
     fails(DiffusionVLError, "--warmup-steps must be zero or more")),
    (119, "--weight-decay -0.1", lambda w: w.train(weight_decay=-0.1), fails(DiffusionVLError, "--weight-decay")),
    (119, "--epochs -1", lambda w: w.train(epochs=-1), fails(DiffusionVLError, "--epochs must be zero or more")),
    (119, "--max-length 0", lambda w: w.train(max_length=0),
     fails(DiffusionVLError, "--max-length must be a positive")),
]
ROWS = sorted({row for row, *_ in CASES})


@pytest.mark.parametrize(("row", "description", "setup", "expected"), CASES,
                         ids=[f"{row}-{description}" for row, description, *_ in CASES])
def test_probe(row, description, setup, expected, tmp_path, assets, capsys):
    expected(Workspace(tmp_path, assets, capsys), setup)
