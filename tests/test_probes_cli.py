"""The command-line rows of the bad-inputs probes (/work/shared/probes/bad-inputs.md), run as real processes.

`python -m diffusionvl.cli ...` in a subprocess, as a user runs it: an error row must exit with status 2 and end
its stderr with one `error: ...` line, an OK row must exit with 0, and no row may print a traceback. The messages
themselves are checked in-process by tests/test_probes_loading.py (and test_probes_decoding.py for rows 20-26);
here each case checks only a key phrase. One representative invocation per row; the OK rows share invocations
(each subprocess pays about 3 s of imports).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from probes import GEN, Probe, a_file, delete, drop, edit_base, tree, truncate

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
OK = 0


def diffusionvl(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffusionvl.cli", *map(str, argv)], capture_output=True, text=True,
                          env=ENV, cwd=REPO, timeout=300)


def text(p, *extra, path=None, **variant):
    """generate on the text checkpoint (or `path`, or an edited copy of the text checkpoint)."""
    model = path if path is not None else p.variant("text", **variant) if variant else p.fx.text
    return ["generate", model, *GEN, *extra]


def images(p, *names, prompt="w1 w2"):
    """generate on the VLM checkpoint with these images."""
    return ["generate", p.fx.vl, *GEN[2:], "--prompt", prompt, *[a for n in names for a in ("--image", p.image(n))]]


def convert(p, src, *extra, dst=None):
    return ["convert", src, dst if dst is not None else p.tmp / "dst", *extra]


def non_empty(folder: Path) -> Path:
    folder.mkdir()
    (folder / "keep.txt").write_text("keep me")
    return folder


def empty(folder: Path) -> Path:
    folder.mkdir()
    return folder


ALL_IMAGES = ("L.png", "RGBA.png", "P.png", "I16.png", "1x1.png", "3000x20.png", "10000.png")
GENERATED = r"tokens/forward"
# (rows, description, argv (or several, run in order), exit status, regex of the error line or of the output)
CASES = [
    ((1,), "model folder missing", lambda p: text(p, path=p.tmp / "nowhere"), 2, "model folder not found"),
    ((2,), "corrupt config.json", lambda p: text(p, files=lambda d: (d / "config.json").write_text('{"a": 1,')),
     2, "is not valid JSON"),
    ((3,), "an AR qwen2 folder", lambda p: text(p, path=p.fx.ar_text), 2, "diffusionvl convert"),
    ((4,), "model_type bert", lambda p: text(p, config=lambda c: c.update(model_type="bert")), 2, "'bert' checkpoint"),
    ((5,), "unknown base_config.model_type", lambda p: text(p, config=edit_base(model_type="frobnicator")), 2,
     "base_config.model_type 'frobnicator'"),
    ((6,), "base_config deleted", lambda p: text(p, config=drop("base_config")), 2, "has no base_config"),
    ((7,), "model.safetensors deleted", lambda p: text(p, files=delete("model.safetensors")), 2, "holds no weights"),
    ((8,), "model.safetensors cut to 20 kB", lambda p: text(p, files=truncate("model.safetensors", 20_000)), 2,
     "is truncated"),
    ((9,), "no tokenizer files", lambda p: text(p, files=delete("tokenizer.json", "tokenizer_config.json")), 2,
     "no tokenizer in"),
    ((10,), "--image missing", lambda p: images(p, "nope.png"), 2, "image file not found"),
    ((11,), "--image a truncated PNG", lambda p: images(p, "truncated.png"), 2, "truncated.png cannot be decoded"),
    ((12, 13, 14, 22, 27, 30), "L, RGBA, P, I;16, 1x1, 3000x20 and 10000x10000 images, one <image> each, --steps 100",
     lambda p: [*images(p, *ALL_IMAGES, prompt="<image> " * len(ALL_IMAGES) + "w1"), "--steps", "100"], OK, GENERATED),
    ((15,), "--image 5000x10", lambda p: images(p, "5000x10.png"), 2, "5000x10.png is 5000x10, an aspect ratio"),
    ((16,), "--image 20000x20000", lambda p: images(p, "20000.png"), 2, "20000.png is too large"),
    ((17,), "--image with a corrupt chunk", lambda p: images(p, "chunk.png"), 2, "chunk.png cannot be decoded"),
    ((18,), "--image with a truncated IHDR", lambda p: images(p, "ihdr.png"), 2, "ihdr.png cannot be decoded"),
    ((19,), "--image to a text checkpoint", lambda p: text(p, "--image", p.image("rgb.png")), 2,
     "needs a vision-language checkpoint"),
    ((20,), "--prompt ''", lambda p: ["generate", p.fx.text, "--prompt", ""], 2, "the prompt is empty"),
    ((21,), "--max-new-tokens 0", lambda p: text(p, "--max-new-tokens", "0"), 2, "max_new_tokens must be a positive"),
    ((23,), "--threshold 1.5", lambda p: text(p, "--threshold", "1.5"), 2, "confidence_threshold must lie in"),
    ((24,), "--strategy greedy", lambda p: text(p, "--strategy", "greedy"), 2, "invalid choice: 'greedy'"),
    ((25,), "--temperature -1", lambda p: text(p, "--temperature", "-1"), 2, "temperature must be"),
    ((26,), "--temperature inf", lambda p: text(p, "--temperature", "inf"), 2, "temperature must be"),
    ((28,), "<image> without --image", lambda p: images(p, prompt="<image> w1"), 2, "holds 1 <image> placeholder"),
    ((29,), "a 600-word prompt", lambda p: ["generate", p.fx.text, "--prompt", " ".join(["w1"] * 600)], 2,
     "has 600 tokens but the model has 512 positions"),
    ((31,), "model path is a file", lambda p: text(p, path=p.image("rgb.png")), 2, "holds no config.json"),
    ((32,), "released layout with video_token_id null", lambda p: [
        "generate", p.variant("released", lambda c: c.update(video_token_id=None)), *GEN,
        "--image", p.image("rgb.png")], OK, GENERATED),
    ((78,), "convert: source missing", lambda p: convert(p, p.tmp / "nowhere"), 2, "holds no config.json"),
    ((79,), "convert: source is BERT", lambda p: convert(p, p.fx.bert), 2, "BertLMHeadModel cannot be wrapped"),
    ((80,), "convert: dst not empty", lambda p: convert(p, p.fx.ar_text, dst=non_empty(p.tmp / "dst")), 2,
     "is not empty"),
    ((81, 87), "convert into an empty folder with --dtype bfloat16, then generate", lambda p: [
        convert(p, p.fx.ar_vl, "--block-size", "4", "--dtype", "bfloat16", dst=empty(p.tmp / "dst")),
        ["generate", p.tmp / "dst", *GEN, "--image", p.image("rgb.png")]], OK, GENERATED),
    ((82,), "convert: dst an existing file", lambda p: convert(p, p.fx.ar_text, dst=a_file(p.tmp / "dst")), 2,
     "is a file; choose a new directory"),
    ((83,), "convert: dst under a file", lambda p: convert(p, p.fx.ar_text, dst=a_file(p.tmp / "f") / "dst"), 2,
     "is a file, not a directory"),
    ((84,), "convert: dst not writable", lambda p: convert(p, p.fx.ar_text, dst="/proc/diffusionvl_out"), 2,
     "cannot write /proc/diffusionvl_out"),
    ((85,), "convert --block-size 0", lambda p: convert(p, p.fx.ar_text, "--block-size", "0"), 2,
     "block_size must be a positive integer"),
    ((86,), "convert a Qwen2.5-VL without preprocessor_config.json", lambda p: convert(
        p, p.variant("ar_vl", files=delete("preprocessor_config.json"))), 2, r"preprocessor_config\.json"),
]
ROWS = sorted({row for rows, *_ in CASES for row in rows})


def run_row(commands, status: int, expected: str) -> None:
    """Run one row's commands in order (all but the last must succeed); the last must exit with `status`, print
    `expected` (OK) or end in one matching `error: ...` line, and no command may print a traceback."""
    commands = commands if isinstance(commands[0], list) else [commands]
    for index, command in enumerate(commands):
        result = diffusionvl(*command)
        assert "Traceback" not in result.stderr, result.stderr
        assert result.returncode == (status if index == len(commands) - 1 else OK), result.stderr[-3000:]
    if status == OK:
        assert re.search(expected, result.stdout + result.stderr), result.stdout + result.stderr[-3000:]
        return
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(expected, last), result.stderr[-3000:]


@pytest.mark.parametrize("rows,description,argv,status,expected", CASES,
                         ids=["row-" + "-".join(f"{r:02d}" for r in rows) + f" {what}" for rows, what, *_ in CASES])
def test_cli_row(rows, description, argv, status, expected, probe_checkpoints, tmp_path):
    commands = argv(Probe(probe_checkpoints, tmp_path, capsys=None))
    before = tree(tmp_path)
    run_row(commands, status, expected)
    if status != OK:
        assert tree(tmp_path) == before, "a refused command must leave its files and destination as they were"
