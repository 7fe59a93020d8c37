"""Training on LLaVA-format data: checkpoints, exact resume after a kill, stage 1, data robustness."""

import json

import pytest
import torch
from conftest import MASK_ID, tiny_qwen_vl, tiny_siglip_qwen, tiny_vl_processor, write_image
from transformers import TrainerCallback

from diffusionvl import DiffusionVL
from diffusionvl.training.data import read_llava
from diffusionvl.training.train import TrainingConfig, train


def llava_data(folder, broken: bool = True):
    """Six records: four with generated images of two sizes, one text-only, one whose image is missing."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(4):
        write_image(folder / f"{i}.png", 56, 84 if i % 2 else 56, seed=i)
        records.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\nw{i} w{i + 1}"}, {"from": "gpt", "value": f"w{i + 10} w{i + 11} w{i + 12}"}]})
    records.append({"id": "text", "conversations": [{"from": "human", "value": "w5 w6"}, {"from": "gpt", "value": "w20"}]})
    if broken:
        records.append({"id": "gone", "image": "missing.png", "conversations": [
            {"from": "human", "value": "<image> w1"}, {"from": "gpt", "value": "w2"}]})
    path = folder / "data.json"
    path.write_text(json.dumps(records, indent=1))
    return path


def corrupt_png(path):
    """A PNG whose second data chunk has a damaged header, so Pillow raises SyntaxError ('broken PNG file') only
    while decoding, as the probes found with random byte flips."""
    import re

    from PIL import Image

    write_image(path, 200, 200, seed=9)  # random pixels compress badly: the data spans two IDAT chunks
    good = path.read_bytes()
    for tag in [match.start() for match in re.finditer(b"IDAT", good)][1:]:
        for position in range(tag - 8, tag + 4):  # the previous chunk's CRC, this one's length and type
            broken = bytearray(good)
            broken[position] ^= 0xFF
            path.write_bytes(bytes(broken))
            try:
                Image.open(path).load()
            except SyntaxError:
                return path
            except Exception:  # noqa: BLE001 - another kind of damage: try the next byte
                continue
    raise AssertionError("no single flipped byte gives a SyntaxError")


def bomb_png(tmp_path_factory):
    """A 20000 x 20000 PNG (400 Mpx, about 0.4 MB on disk), made once per test session."""
    from PIL import Image

    path = tmp_path_factory.getbasetemp() / "bomb-400mpx.png"
    if not path.is_file():
        Image.new("L", (20000, 20000), 200).save(path)
    return path


def broken_images(folder, bomb) -> dict[str, str]:
    """Image files of the three kinds that used to end a run: name -> the reason they are counted under."""
    import shutil

    corrupt_png(folder / "corrupt.png")
    (folder / "zero.png").write_bytes(b"")
    shutil.copy(bomb, folder / "bomb.png")
    return {"corrupt.png": "undecodable", "zero.png": "undecodable", "bomb.png": "too large"}


def image_record(name: str, image: str) -> dict:
    return {"id": name, "image": image, "conversations": [{"from": "human", "value": "<image> w1"},
                                                          {"from": "gpt", "value": "w2 w3"}]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny Qwen2.5-VL translated to DiffusionVL, saved with its processor, as `diffusionvl convert` writes."""
    path = tmp_path_factory.mktemp("dvl")
    processor = tiny_vl_processor()
    DiffusionVL.from_autoregressive(tiny_qwen_vl(), processor, mask_token_id=MASK_ID, block_size=4).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def config(checkpoint, data, output, **overrides):
    values = dict(data=str(data), model=str(checkpoint), output_dir=str(output), image_folder=str(data.parent),
                  batch_size=2, max_steps=4, save_steps=2, logging_steps=1, learning_rate=1e-3, seed=0)
    return TrainingConfig(**{**values, **overrides})


def losses(output) -> dict[int, float]:
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line["loss"] for line in lines if "loss" in line}


def test_training_writes_checkpoints_that_load_and_logs_the_run(tmp_path, checkpoint):
    data = llava_data(tmp_path / "data")
    trainer = train(config(checkpoint, data, tmp_path / "run"))
    assert trainer.state.global_step == 4
    loaded = DiffusionVL.from_pretrained(tmp_path / "run" / "checkpoint-4")
    assert loaded.block_size == 4
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step_logs = [line for line in logs if "loss" in line]
    assert len(step_logs) == 4 and all(0 < line["noise_level"] <= 1 and line["tokens_per_second"] > 0 for line in step_logs)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    # the record whose image is missing is counted once, however often the data order passes over it
    assert run["skipped_records"] == 1 and run["skipped_by_reason"] == {"missing": 1}
    assert step_logs[-1]["skipped_records"] == 1 and step_logs[-1]["skipped_missing"] == 1


def test_a_checkpoint_holds_the_processor_so_generate_runs_on_it(tmp_path, checkpoint, capsys):
    from diffusionvl import cli

    data = llava_data(tmp_path / "data", broken=False)
    train(config(checkpoint, data, tmp_path / "run", max_steps=1, save_steps=1))
    saved = tmp_path / "run" / "checkpoint-1"
    assert (saved / "tokenizer.json").is_file() and (saved / "processor_config.json").is_file()
    cli.main(["generate", str(saved), "--prompt", "w1 w2", "--image", str(data.parent / "0.png"),
              "--max-new-tokens", "4", "--steps", "2"])
    assert "tokens/forward" in capsys.readouterr().err


def test_broken_images_are_skipped_once_by_reason_and_a_killed_run_resumes_exactly(tmp_path, checkpoint,
                                                                                      tmp_path_factory, capsys):
    """A corrupt PNG, a 400-Mpx PNG and an empty file among good records: the run finishes, counts 3 records
    (8 steps of 2 are two epochs of the 8 records, so a per-fetch count would say 6 or more), and after a real
    SIGKILL `--resume` gives the same losses and the same count."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from transformers.trainer_utils import get_last_checkpoint

    from diffusionvl import cli

    data = llava_data(tmp_path / "data", broken=False)
    broken = broken_images(data.parent, bomb_png(tmp_path_factory))
    data.write_text(json.dumps(json.loads(data.read_text()) + [image_record(n, n) for n in broken]))
    flags = ["train", "--data", str(data), "--image-folder", str(data.parent), "--model", str(checkpoint),
             "--batch-size", "2", "--max-steps", "8", "--save-steps", "2", "--logging-steps", "1",
             "--learning-rate", "1e-3"]
    cli.main([*flags, "--output-dir", str(tmp_path / "a")])
    assert "done: 8 steps, 3 records skipped (1 too large, 2 undecodable)" in capsys.readouterr().out
    killed = tmp_path / "b"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with (tmp_path / "log").open("w") as log:
        run = subprocess.Popen([sys.executable, "-m", "diffusionvl.cli", *flags, "--output-dir", str(killed)],
                               env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 240
        while not (killed / "checkpoint-2").is_dir() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        run.send_signal(signal.SIGKILL)
        assert run.wait() == -signal.SIGKILL, (tmp_path / "log").read_text()[-2000:]
    start = int(get_last_checkpoint(str(killed)).rsplit("-", 1)[1])
    assert start < 8, "the run finished before it was killed"
    cli.main([*flags, "--output-dir", str(killed), "--resume"])
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, 9))  # the steps replayed after the kill are not logged twice
    expected, resumed = losses(tmp_path / "a"), losses(killed)
    for step in range(start + 1, 9):
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6), step
    for output in (tmp_path / "a", killed):
        run_json = json.loads((output / "run.json").read_text())
        assert run_json["skipped_by_reason"] == {"too large": 1, "undecodable": 2}, output


class Crash(TrainerCallback):
    """Stands in for a kill: the run dies in step 3, after checkpoint-2 was written."""

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise KeyboardInterrupt("killed")


def test_a_killed_run_resumes_exactly(tmp_path, checkpoint):
    data = llava_data(tmp_path / "data")
    uninterrupted = tmp_path / "a"
    train(config(checkpoint, data, uninterrupted, max_steps=6))
    killed = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        train(config(checkpoint, data, killed, max_steps=6), callbacks=[Crash()])
    assert (killed / "checkpoint-2").is_dir() and not (killed / "checkpoint-4").exists()
    (killed / ".staging" / "checkpoint-4").mkdir(parents=True)  # what a kill during a save leaves behind
    train(config(checkpoint, data, killed, max_steps=6, resume=True))
    expected, resumed = losses(uninterrupted), losses(killed)
    assert sorted(resumed) == list(range(1, 7))
    for step in range(3, 7):  # same data order, noise draws and optimizer state: the same losses
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6), step


def test_stage_one_changes_only_the_projector(tmp_path):
    from transformers import SiglipImageProcessorPil

    from diffusionvl.modeling.processing import DiffusionVLProcessor

    model_dir = tmp_path / "composite"
    composite = tiny_siglip_qwen()
    composite.save_pretrained(model_dir)
    tokenizer = tiny_vl_processor().tokenizer
    images = SiglipImageProcessorPil(size={"height": 28, "width": 28})
    DiffusionVLProcessor(images, tokenizer, image_seq_length=5).save_pretrained(model_dir)
    before = {k: v.clone() for k, v in composite.state_dict().items()}
    data = llava_data(tmp_path / "data", broken=False)
    train(config(model_dir, data, tmp_path / "run", stage="projector", max_steps=2, save_steps=2))
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "checkpoint-2").state_dict()
    changed = {k for k in before if not torch.equal(before[k], trained[k])}
    assert changed and all(k.startswith(("projector.", "image_newline")) for k in changed)


def test_malformed_data_files_fail_at_start_naming_the_line(tmp_path):
    jsonl = tmp_path / "data.jsonl"
    good = json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "w1"}]})
    jsonl.write_text(good + "\n" + good + "\n{not json\n")
    with pytest.raises(ValueError, match="data.jsonl:3"):
        read_llava(jsonl)
    records = tmp_path / "data.json"
    records.write_text('[\n  {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},\n'
                       '  {"id": "x", "conversations": [{"from": "robot", "value": "a"}]}\n]')
    with pytest.raises(ValueError, match="data.json:3"):
        read_llava(records)


def test_ddp_over_two_cpu_processes_trains_and_writes_one_checkpoint(tmp_path, checkpoint):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:  # a free local port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = llava_data(tmp_path / "data")
    command = [
        # `--cpu` makes this accelerate start a single process; its torchrun launcher (`--multi_gpu`) starts two,
        # and the Trainer (use_cpu on a machine without CUDA) joins them with gloo: DDP on the CPU.
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        "-m", "diffusionvl.cli", "train", "--data", str(data), "--image-folder", str(data.parent),
        "--model", str(checkpoint), "--output-dir", str(tmp_path / "run"), "--max-steps", "2", "--save-steps", "2",
        "--batch-size", "1", "--logging-steps", "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2"]
    assert (tmp_path / "run" / "checkpoint-2" / "rng_state_1.pth").is_file()  # both ranks took part
    DiffusionVL.from_pretrained(tmp_path / "run" / "checkpoint-2")


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    from conftest import fake_image, image_prompt

    model = DiffusionVL.from_autoregressive(tiny_qwen_vl(), mask_token_id=MASK_ID, block_size=4).train()
    pixels, grid, n = fake_image(4, 6)
    ids = image_prompt([5], n, [7, 1, 40, 41, 42, 2])[None]
    labels = ids.clone()
    labels[:, : n + 3] = -100

    def loss_and_grads():
        model.zero_grad()
        out = model(input_ids=ids, labels=labels, pixel_values=pixels, image_grid_thw=grid,
                    generator=torch.Generator().manual_seed(0))
        out.loss.backward()
        return out.loss.item(), [p.grad.clone() for p in model.parameters()]

    plain_loss, plain = loss_and_grads()
    model.activation_checkpointing_enable()
    checkpointed_loss, checkpointed = loss_and_grads()
    assert checkpointed_loss == plain_loss
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checkpointed))


def test_shipped_accelerate_and_deepspeed_configs_are_valid():
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    root = Path(__file__).resolve().parent.parent / "configs"
    kinds = {p.stem: load_config_from_file(str(p)).distributed_type.name for p in (root / "accelerate").glob("*.yaml")}
    assert kinds == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}
    for name, stage in (("zero2", 2), ("zero3", 3)):
        assert json.loads((root / "deepspeed" / f"{name}.json").read_text())["zero_optimization"]["stage"] == stage
        assert f"configs/deepspeed/{name}.json" in (root / "accelerate" / f"deepspeed_{name}.yaml").read_text()


def test_lora_trains_adapters_only_resumes_and_merges_into_a_plain_checkpoint(tmp_path, checkpoint):
    data = llava_data(tmp_path / "data", broken=False)
    base = DiffusionVL.from_pretrained(checkpoint).state_dict()
    trainer = train(config(checkpoint, data, tmp_path / "run", lora_rank=4, max_steps=2, save_steps=2))
    trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    embedding = "model.model.language_model.embed_tokens.weight"  # its mask row trains beside the adapters
    assert all("lora_" in n or n.startswith("model.model.visual.merger.") or n == embedding for n in trained)
    adapters = DiffusionVL.from_pretrained(tmp_path / "run" / "checkpoint-2")  # adapters rebuilt from the config
    assert adapters.config.lora["r"] == 4
    merged = DiffusionVL.from_pretrained(tmp_path / "run" / "merged")
    assert merged.config.lora is None and sorted(merged.state_dict()) == sorted(base)
    frozen = "model.model.language_model.layers.0.mlp.up_proj.weight"  # not a LoRA target: unchanged
    assert torch.equal(merged.state_dict()[frozen], base[frozen])
    adapted = "model.model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[adapted], base[adapted])
    changed = (merged.state_dict()[embedding] != base[embedding]).any(1).nonzero().flatten().tolist()
    assert changed == [merged.special_tokens.mask]  # only the mask row of the embedding moved
    from conftest import fake_image, image_prompt

    pixels, grid, n = fake_image(4, 6)
    prompt = image_prompt([5], n, [7, 1])[None]
    logits = [m(input_ids=prompt, pixel_values=pixels, image_grid_thw=grid).logits for m in (adapters, merged)]
    assert torch.allclose(logits[0], logits[1], atol=1e-5)


def cli_error(argv: list[str], capsys) -> str:
    """What `diffusionvl ...` prints when it fails: one `error:` line, exit status 2."""
    from diffusionvl import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_training_errors_say_what_to_do(tmp_path, checkpoint, capsys):
    data = llava_data(tmp_path / "data")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        train(config(checkpoint, data, tmp_path / "fresh", resume=True))
    common = ["train", "--model", str(checkpoint), "--output-dir", str(tmp_path / "o")]
    assert "error: data file not found" in cli_error([*common, "--data", str(tmp_path / "none.json")], capsys)
    stage = cli_error([*common, "--data", str(data), "--stage", "x"], capsys)
    assert "stage must be one of 'projector', 'diffusion', 'autoregressive'" in stage
    tiny_siglip_qwen().save_pretrained(tmp_path / "ar")
    argv = ["train", "--data", str(data), "--image-folder", str(data.parent), "--model", str(tmp_path / "ar"),
            "--output-dir", str(tmp_path / "o")]
    assert "needs a DiffusionVL checkpoint" in cli_error(argv, capsys)
    assert not (tmp_path / "o").exists()  # every one of these failed before the output folder was created


def test_new_options_are_checked_by_name():
    common = dict(data="d.json", model="m", output_dir="o")
    with pytest.raises(ValueError, match="--ar-loss must be 'per_token' or 'per_sample'"):
        TrainingConfig(**common, ar_loss="mean")
    with pytest.raises(ValueError, match="--lr-schedule must be one of 'linear', 'cosine', 'constant'"):
        TrainingConfig(**common, lr_schedule="step")
    with pytest.raises(ValueError, match="LoRA adapts the language model in stage 'diffusion' only"):
        TrainingConfig(**common, stage="autoregressive", lora_rank=4)
    assert TrainingConfig(**common, stage="autoregressive", lr_schedule="cosine").stage == "autoregressive"
    with pytest.raises(ValueError, match="--weight-decay would shrink the embedding rows"):
        TrainingConfig(**common, lora_rank=4, weight_decay=0.01)
    assert TrainingConfig(**common, lora_rank=4, weight_decay=0.01, lora_mask_row=False).weight_decay == 0.01


@pytest.mark.parametrize("fsdp, deepspeed, refused", [(True, False, "FSDP"), (False, True, "DeepSpeed"),
                                                       (False, False, None)])
def test_resume_under_sharded_training_is_refused_with_the_way_out(fsdp, deepspeed, refused):
    """The Trainer runs FSDP only on GPUs (on this CPU it falls back to DDP), so a sharded resume cannot be checked
    here: it is refused, naming what works, rather than risked. A fresh sharded run is not refused."""
    from types import SimpleNamespace

    from diffusionvl.errors import DiffusionVLError
    from diffusionvl.training.train import check_sharded_resume

    trainer = SimpleNamespace(is_fsdp_enabled=fsdp, is_deepspeed_enabled=deepspeed)
    check_sharded_resume(trainer, None)
    if refused is None:
        check_sharded_resume(trainer, "out/checkpoint-2")
        return
    with pytest.raises(DiffusionVLError, match=rf"--resume under {refused} is not supported yet.*ddp\.yaml"):
        check_sharded_resume(trainer, "out/checkpoint-2")


def test_the_source_terms_train_through_the_trainer(tmp_path, checkpoint):
    """--distill-weight and --confidence-weight reach the loss: the same run without them logs other losses."""
    data = llava_data(tmp_path / "data", broken=False)
    train(config(checkpoint, data, tmp_path / "plain", lora_rank=4, max_steps=2, save_steps=2))
    train(config(checkpoint, data, tmp_path / "kept", lora_rank=4, max_steps=2, save_steps=2, distill_weight=1.0,
                 confidence_weight=0.5))
    plain, kept = losses(tmp_path / "plain"), losses(tmp_path / "kept")
    assert sorted(kept) == [1, 2] and all(kept[step] != pytest.approx(plain[step], abs=1e-6) for step in kept)


def test_the_noise_pattern_reaches_the_loss_and_is_saved_with_the_checkpoint(tmp_path, checkpoint):
    data = llava_data(tmp_path / "data", broken=False)
    train(config(checkpoint, data, tmp_path / "plain", max_steps=2, save_steps=2))
    train(config(checkpoint, data, tmp_path / "suffix", max_steps=2, save_steps=2, noise_pattern="suffix"))
    plain, suffix = losses(tmp_path / "plain"), losses(tmp_path / "suffix")
    assert sorted(suffix) == [1, 2] and any(suffix[step] != pytest.approx(plain[step], abs=1e-6) for step in suffix)
    saved = lambda run: DiffusionVL.from_pretrained(tmp_path / run / "checkpoint-2").config.noise_pattern
    assert (saved("plain"), saved("suffix")) == ("independent", "suffix")
    with pytest.raises(ValueError, match="--noise-pattern must be 'independent' or 'suffix', got 'prefix'"):
        TrainingConfig(data="d.json", model="m", output_dir="o", noise_pattern="prefix")
