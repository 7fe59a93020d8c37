"""The wrapping, conversion and save/load rows of the bad-inputs probes (rows 62-71, 78-87 and
120-131): from_autoregressive's special tokens and options, diffusionvl convert, checkpoints saved and loaded.

A case is (row, description, call, expected). `call(p)` gets a `Probe` (tests/probes.py): the module's tiny
checkpoints, a fresh folder and the command line. expected is (error type, message regex), a regex that what the
call returns (the command's stderr, for `p.cli`) must match, or a predicate on the result. Command-line rows run
in-process here; tests/test_probes_cli.py runs them as subprocesses.
"""

import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import MASK_ID, tiny_causal_lm, tiny_tokenizer
from probes import (
    BAD,
    CONVERTED,
    GEN,
    GENERATED,
    LAYOUT,
    Probe,
    a_file,
    check_case,
    delete,
    drop,
    edit_base,
    gen_text,
    load,
    same_model,
    weights,
)
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

from diffusionvl import DiffusionVL, UnsupportedModelError
from diffusionvl.modeling.lora import add_lora

# --- rows 62-71: from_autoregressive ------------------------------------------------------------------------------

def wrap(model=None, tokenizer=None, **options):
    return DiffusionVL.from_autoregressive(tiny_causal_lm() if model is None else model, tokenizer, **options)


def no_eos():
    return tiny_causal_lm("llama", eos_token_id=None, bos_token_id=None, pad_token_id=None)


def gpt2():
    """GPT-2's config keeps its default eos 50256, outside this 64-row vocabulary."""
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=128)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


def tokens(**ids):
    return lambda model: all(getattr(model.special_tokens, name) == value for name, value in ids.items())


OUTSIDE = r"mask token id {} is outside the vocabulary \(0\.\.95\)"
CASES = [
    (62, "no mask id and no tokenizer", lambda p: wrap(), (BAD, r"no mask token: pass the tokenizer .*mask_token_id=")),
    (63, "no EOS anywhere", lambda p: wrap(no_eos(), mask_token_id=MASK_ID),
     (BAD, r"no end-of-turn token found.*pass eot_token_id=")),
    (64, "no EOS, eot_token_id=2 as the error says", lambda p: wrap(no_eos(), mask_token_id=MASK_ID, eot_token_id=2),
     tokens(eot=2, pad=2)),
    (65, "eot_token_id and pad_token_id override the config", lambda p: wrap(
        tiny_causal_lm(eos_token_id=5), mask_token_id=MASK_ID, eot_token_id=7, pad_token_id=9), tokens(eot=7, pad=9)),
    (66, "misspelt option blocksize", lambda p: wrap(mask_token_id=MASK_ID, blocksize=4),
     (TypeError, r"unknown option\(s\) \['blocksize'\]; valid ones are .*'block_size'")),
    (67, "mask id outside the vocabulary", lambda p: wrap(mask_token_id=96), (BAD, OUTSIDE.format(96))),
    (67, "mask id negative", lambda p: wrap(mask_token_id=-1), (BAD, OUTSIDE.format(-1))),
    (67, "mask id = EOS", lambda p: wrap(mask_token_id=2), (BAD, r"the mask token \(2\) must differ")),
    (67, "mask id = pad", lambda p: wrap(mask_token_id=0), (BAD, r"the mask token \(0\) must differ")),
    (68, "GPT-2 eos 50256 outside a 64-row vocabulary", lambda p: wrap(gpt2(), mask_token_id=63),
     (BAD, r"eot token id 50256 is outside the vocabulary \(0\.\.63\); pass eot_token_id=")),
    (68, "GPT-2 with eot_token_id= as the error says", lambda p: wrap(gpt2(), mask_token_id=63, eot_token_id=2),
     tokens(eot=2, mask=63)),
    (69, "noise_eps_min 0", lambda p: wrap(mask_token_id=MASK_ID, noise_eps_min=0.0),
     (ValueError, r"noise levels need 0 < noise_eps_min")),
    (69, "noisy_stream compact", lambda p: wrap(mask_token_id=MASK_ID, noisy_stream="compact"),
     (BAD, r"noisy_stream.*compact")),
    (70, "wrap a DiffusionVL again", lambda p: wrap(wrap(mask_token_id=MASK_ID), mask_token_id=MASK_ID),
     (UnsupportedModelError, r"already a DiffusionVL; it needs no second translation")),
    (71, "wrap a torch.nn.Linear", lambda p: wrap(torch.nn.Linear(4, 4), mask_token_id=MASK_ID),
     (UnsupportedModelError, r"takes a transformers causal LM .*got a Linear")),
]


# --- rows 78-87: convert ------------------------------------------------------------------------------------------

def fixed_then_converted(p) -> str:
    """Row 86: refused before anything is written (Probe.cli checks); once the file is back, the command works."""
    src = p.variant("ar_vl", files=delete("preprocessor_config.json"))
    err = p.cli("convert", src, p.tmp / "dst", "--block-size", "4")
    assert re.search(r"without an image processor \(preprocessor_config\.json\)", err), err
    shutil.copy(p.fx.ar_vl / "preprocessor_config.json", src)
    return p.run("convert", src, p.tmp / "dst", "--block-size", "4")


def bfloat16_then_generate(p) -> str:
    """Row 87: convert with --dtype bfloat16, then generate with an image."""
    p.run("convert", p.fx.ar_vl, p.tmp / "dst", "--block-size", "4", "--dtype", "bfloat16")
    return p.run("generate", p.tmp / "dst", *GEN, "--image", p.image("rgb.png"))


CASES += [
    (78, "source missing", lambda p: p.cli("convert", p.tmp / "nowhere", p.tmp / "dst"), r"nowhere holds no config"),
    (79, "source is BERT", lambda p: p.cli("convert", p.fx.bert, p.tmp / "dst"),
     r"BertLMHeadModel cannot be wrapped for block diffusion"),
    (80, "dst not empty", lambda p: p.cli("convert", p.fx.ar_text, p.variant("text")),
     r"text is not empty; choose a new directory"),
    (81, "dst an empty existing folder", lambda p: (p.tmp / "dst").mkdir() or p.run(
        "convert", p.fx.ar_text, p.tmp / "dst", "--block-size", "4"), CONVERTED),
    (82, "dst an existing file, kept", lambda p: p.cli("convert", p.fx.ar_text, a_file(p.tmp / "dst")),
     r"dst is a file; choose a new directory"),
    (83, "dst under a file", lambda p: p.cli("convert", p.fx.ar_text, p.image("rgb.png") / "dst"),
     r"cannot create .*rgb\.png/dst: .*rgb\.png is a file, not a directory"),
    (84, "dst not writable: refused before the source's weights are read (they are missing here)", lambda p: p.cli(
        "convert", p.variant("ar_text", files=delete("model.safetensors")), "/proc/diffusionvl_out"),
     r"cannot write /proc/diffusionvl_out .*choose another destination"),
    (85, "--block-size 0 writes nothing", lambda p: p.cli("convert", p.fx.ar_text, p.tmp / "dst", "--block-size", "0"),
     "block_size must be a positive integer"),
    (85, "--mask-token-id 999 writes nothing", lambda p: p.cli(
        "convert", p.fx.ar_text, p.tmp / "dst", "--mask-token-id", "999"), r"mask token id 999 is outside the vocab"),
    (86, "Qwen2.5-VL source without preprocessor_config.json, then fixed", fixed_then_converted, CONVERTED),
    (87, "--dtype bfloat16, then generate", bfloat16_then_generate, GENERATED),
]


# --- rows 120-131: save and load ----------------------------------------------------------------------------------

def round_trip(p, tokenizer_too=True, lora=False) -> bool:
    """Rows 120, 121, 131: saved and reloaded (with the Auto classes), the same model; `<|mask|>` is kept in the
    saved tokenizer, and without it the tokenizer the model was made with still serves."""
    tokenizer = tiny_tokenizer(words=60)
    model = DiffusionVL.from_autoregressive(tiny_causal_lm(vocab_size=63), tokenizer, block_size=4)
    if lora:
        add_lora(model, rank=2)
    model.save_pretrained(p.tmp)
    if tokenizer_too:
        tokenizer.save_pretrained(p.tmp)
        tokenizer = AutoTokenizer.from_pretrained(p.tmp)
    again = AutoModelForCausalLM.from_pretrained(p.tmp)
    ids = tokenizer("w1 w2 w3", return_tensors="pt").input_ids
    return same_model(model, again) and again.config.lora == model.config.lora and \
        tokenizer.convert_ids_to_tokens(again.special_tokens.mask) == "<|mask|>" and \
        torch.equal(again.generate(ids, max_new_tokens=8), model.generate(ids, max_new_tokens=8))


def loads_as_saved(p, path: Path) -> bool:
    """The edited copy loads to the very model of the text fixture."""
    return same_model(load(p.fx.text), load(path))


def to_bin(path: Path) -> None:
    torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()


def renamed(old: str, new: str):
    return weights(lambda t: {(new + k[len(old):] if k.startswith(old) else k): v for k, v in t.items()})


NEW_FIELDS = ("noisy_stream", "position_mode", "lora", "noise_eps_min", "noise_eps_max", "antithetic_noise",
              "noise_strata", "loss_average", "image_token_id")
DEFAULTS = dict(noisy_stream="cheap", position_mode="1d", lora=None, noise_eps_min=1e-3,
                noise_strata="supervised_shuffled")
MISMATCH = r"text(: the weights do not load| does not match the DiffusionVL layout)"
CASES += [
    (120, "save + tokenizer, reload with the Auto classes", round_trip, bool),
    (121, "reload with the original tokenizer", lambda p: round_trip(p, tokenizer_too=False), bool),
    (122, "an older config without the newer fields", lambda p: load(p.variant("text", drop(*NEW_FIELDS))),
     lambda model: all(getattr(model.config, name) == value for name, value in DEFAULTS.items())),
    (123, "unknown future fields", lambda p: load(p.variant("text", lambda c: c.update(future_field=1))),
     lambda model: isinstance(model, DiffusionVL)),
    (124, "noisy_stream compact", lambda p: load(p.variant("text", lambda c: c.update(noisy_stream="compact"))),
     (LAYOUT, r"config\.json: Validation error for field 'noisy_stream'.* got compact\. Fix the field")),
    (124, "block_size '8'", lambda p: load(p.variant("text", lambda c: c.update(block_size="8"))),
     (LAYOUT, r"config\.json: .*'block_size' expected int, got str .*Fix the field")),
    (125, "no mask_token_id", lambda p: load(p.variant("text", drop("mask_token_id"))),
     (LAYOUT, r"config\.json names no mask_token_id .*set the field")),
    (126, "weights without the wrapper's model. prefix", lambda p: loads_as_saved(p, p.variant(
        "text", files=renamed("model.", ""))), bool),
    (127, "renamed weights", lambda p: load(p.variant("text", files=renamed("model.model.", "model.transformer."))),
     (LAYOUT, r"does not match the DiffusionVL layout: .*model\.transformer\.")),
    (128, "a weight of the wrong shape", lambda p: load(p.variant("text", files=weights(
        lambda t: {**t, "model.model.norm.weight": torch.ones(7)}))), (LAYOUT, MISMATCH)),
    (128, "config vocab != weights", lambda p: load(p.variant("text", edit_base(vocab_size=70))), (LAYOUT, MISMATCH)),
    (128, "a weight of the wrong shape, from the command line", lambda p: gen_text(
        p, p.variant("text", files=weights(lambda t: {**t, "model.model.norm.weight": torch.ones(7)}))), MISMATCH),
    (129, "fp16 weights under an fp32 config", lambda p: load(p.variant("text", files=weights(
        lambda t: {k: v.half() for k, v in t.items()}))), lambda model: isinstance(model, DiffusionVL)),
    (129, "pytorch_model.bin instead of safetensors", lambda p: loads_as_saved(p, p.variant("text", files=to_bin)),
     bool),
    (130, "relabelled diffusionvl_qwenvl", lambda p: load(p.variant(
        "text", lambda c: c.update(model_type="diffusionvl_qwenvl"))), (LAYOUT, "has no vision_config")),
    (130, "relabelled diffusionvl_qwen", lambda p: load(p.variant(
        "text", lambda c: c.update(model_type="diffusionvl_qwen"))), (LAYOUT, "has no vision_config")),
    (131, "LoRA save/load round trip", lambda p: round_trip(p, lora=True), bool),
]
ROWS = sorted({row for row, *_ in CASES})


@pytest.mark.parametrize("row,description,call,expected", CASES,
                         ids=[f"row-{row:02d} {description}" for row, description, *_ in CASES])
def test_probe_row(row, description, call, expected, probe_checkpoints, tmp_path, capsys):
    check_case(row, description, call, expected, Probe(probe_checkpoints, tmp_path, capsys))


@pytest.mark.parametrize("files", [renamed("model.model.", "model.transformer."),
                                   weights(lambda t: {**t, "model.model.norm.weight": torch.ones(7)})],
                         ids=["renamed weights", "a weight of the wrong shape"])
def test_rows_127_128_a_wrong_layout_is_our_error_alone_without_transformers_load_report(
        files, probe_checkpoints, tmp_path, capfd):
    from diffusionvl import CheckpointLayoutError

    probe = Probe(probe_checkpoints, tmp_path, None)
    with pytest.raises(CheckpointLayoutError, match="does not match the DiffusionVL layout"):
        DiffusionVL.from_pretrained(probe.variant("text", files=files))
    assert "LOAD REPORT" not in capfd.readouterr().err
