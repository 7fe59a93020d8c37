"""Training on LLaVA-format data, on one machine or many: stage 1 (projector, AR loss), stage 2 (block
diffusion), and plain AR training of a source model before translation (stage 'autoregressive'). A thin
`Trainer` subclass: the loss comes from the model, checkpoints are written atomically, and
logs carry the mean noise level, tokens/s and skipped records. Multi-GPU runs go through `accelerate launch`."""

import copy
import errno
import json
import os
import shutil
import time
from dataclasses import asdict, fields, replace
from functools import partial
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints

from ..errors import DiffusionVLError
from ..loading import load_any, load_model, load_processor
from ..model import DiffusionVL
from ..modeling.composite import VisionLanguageModel
from ..modeling.lora import add_lora, merge_lora
from ..modeling.loss import autoregressive_loss
from . import preflight
from .config import TrainingConfig, native_bf16, training_arguments
from .data import LlavaDataset, SkippedRecords, TokenizerOnlyProcessor, collate, read_llava

STAGING = ".staging"  # checkpoints are written under OUTPUT/.staging and renamed into OUTPUT when complete
RUN_STATE = "diffusionvl_run.json"  # what a checkpoint keeps beside the Trainer's own state


class EpochSeededLengthSampler(LengthGroupedSampler):
    """Batches of similar length, in an order that depends only on (seed, epoch): a resumed run sees the same
    order as an uninterrupted one, whatever else drew from the global RNG before."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)


def parameter_part(name: str) -> str:
    """Which part a weight belongs to: 'projector' (projector, image newline, Qwen merger), 'vision' or 'language'."""
    if "projector." in name or "image_newline" in name or "visual.merger." in name:
        return "projector"
    if "vision_tower." in name or "visual." in name:
        return "vision"
    return "language"


def set_trainable(model, config: TrainingConfig) -> None:
    """Freeze by part for the stage; with LoRA the LM's own weights stay frozen and its adapters train. Draft-only
    adapters (lora_scope "noisy") train alone, with the mask row: whatever else trained would move the clean
    stream, which must stay the source's."""
    lora = bool(getattr(model.config, "lora", None))
    if config.stage == "projector":
        wanted = {"projector": True, "vision": False, "language": False}
    elif lora and model.config.lora_scope == "noisy":  # the projector feeds the clean stream too
        wanted = {"projector": False, "vision": False, "language": False}
    else:
        wanted = {"projector": config.train_projector, "vision": config.train_vision,
                  "language": config.train_language}
    for name, parameter in model.named_parameters():
        part = parameter_part(name)
        parameter.requires_grad_("lora_" in name if lora and part == "language" else wanted[part])
    if lora and config.lora_mask_row and isinstance(model, DiffusionVL):
        train_mask_row(model)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("nothing to train: every part is frozen; enable at least one of vision, projector, language.")


def train_mask_row(model: DiffusionVL) -> None:
    """Train the mask token's embedding row beside the LoRA adapters: the row a translation adds, which starts
    out as no token the source knows. A gradient hook zeroes every other row (and, with tied embeddings, the
    head's), so the adapter stays LoRA plus one row."""
    weight = model.get_input_embeddings().weight
    keep = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    keep[model.special_tokens.mask] = 1
    weight.requires_grad_(True)
    weight.register_hook(lambda grad: grad * keep.to(grad.dtype))
    model.trained_embedding_rows = [model.special_tokens.mask]


class RunFinished(Exception):
    """Raised before the first step of a resumed run that has nothing left to train."""


def out_of_space(error: BaseException) -> bool:
    """A write that failed for lack of disk space: errno ENOSPC, or torch's zip writer, which reports a short
    write only as 'unexpected pos'."""
    return getattr(error, "errno", None) == errno.ENOSPC or any(
        text in str(error) for text in ("unexpected pos", "No space left"))


def no_space(run_dir: Path, name: str) -> DiffusionVLError:
    last = get_last_checkpoint(str(run_dir)) or "none yet"
    free = shutil.disk_usage(run_dir).free / 2**20
    return DiffusionVLError(
        f"no space left on the device while saving {name} in {run_dir} ({free:.1f} MiB free now); the partial save "
        f"was removed and the last complete checkpoint ({last}) is intact. Free some space (or lower "
        "--save-total-limit) and rerun with --resume.")


class DiffusionTrainer(Trainer):
    """Trainer with the DiffusionVL losses, per-part learning rates, atomic checkpoints that carry the processor,
    and skipped records counted once each."""

    def __init__(self, *args, run: TrainingConfig, processor, teacher=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.run, self.processor = run, processor  # the processor is saved into every checkpoint
        self.objective = replace(run.objective, teacher=teacher)
        self.totals = {"noise": 0.0, "losses": 0, "tokens": 0}
        self.skipped, self.finished = SkippedRecords(), None  # finished: why a resumed run had nothing to do
        self.clock = time.perf_counter()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.skipped.add(inputs.pop("skipped", ()))
        self.totals["tokens"] += int(inputs["attention_mask"].sum())
        wrapped = isinstance(self.accelerator.unwrap_model(model), DiffusionVL)
        extra = {"autoregressive": True} if wrapped and self.run.stage != "diffusion" else {}
        if wrapped and self.run.stage == "diffusion" and self.run.objective.extra:
            extra = {"objective": self.objective}
        if self.run.stage != "diffusion" and self.run.ar_loss == "per_sample":
            labels = inputs.pop("labels")
            out = model(**inputs, **extra)
            out.loss = autoregressive_loss(out.logits, labels, "per_sample")
        else:
            out = model(**inputs, **extra)
        if getattr(out, "noise_level", None) is not None:
            self.totals["noise"] += float(out.noise_level)
            self.totals["losses"] += 1
        return (out.loss, out) if return_outputs else out.loss

    def create_optimizer(self):
        """AdamW with one group per part, so vision tower, projector and LM can have their own learning rates."""
        if self.optimizer is None:
            rates = {"language": self.run.learning_rate,
                     "vision": self.run.vision_learning_rate or self.run.learning_rate,
                     "projector": self.run.projector_learning_rate or self.run.learning_rate}
            groups = {part: [] for part in rates}
            for name, parameter in self.model.named_parameters():
                if parameter.requires_grad:
                    groups[parameter_part(name)].append(parameter)
            self.optimizer = torch.optim.AdamW(
                [{"params": ps, "lr": rates[part]} for part, ps in groups.items() if ps],
                weight_decay=self.run.weight_decay,
            )
        return self.optimizer

    def _get_train_sampler(self, train_dataset=None):
        if not self.run.group_by_length:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return EpochSeededLengthSampler(batch, lengths=dataset.lengths, seed=self.args.seed)

    def log(self, logs: dict, start_time=None) -> None:
        now = time.perf_counter()
        if "loss" in logs:
            logs["tokens_per_second"] = round(self.totals["tokens"] / max(now - self.clock, 1e-9), 1)
            if self.totals["losses"]:
                logs["noise_level"] = round(self.totals["noise"] / self.totals["losses"], 4)
            self.skipped.merge_processes()
            logs["skipped_records"] = len(self.skipped)
            logs.update({f"skipped_{reason.replace(' ', '_')}": n for reason, n in self.skipped.by_reason().items()})
            self.totals.update(noise=0.0, losses=0, tokens=0)
            self.clock = now
        super().log(logs, start_time)

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint,
                             trial):
        """Stop a resumed run that is already at its last step before it trains anything (the Trainer would run
        one more step and write checkpoint-(N+1))."""
        done = super()._init_training_state(max_steps, num_update_steps_per_epoch, num_train_epochs,
                                            resume_from_checkpoint, trial)
        if resume_from_checkpoint is not None and self.state.global_step >= max_steps:
            raise RunFinished(f"nothing to do: {resume_from_checkpoint} is at step {self.state.global_step} of "
                              f"{max_steps}; the run is already finished. Raise --max-steps or --epochs to train on.")
        return done

    def _save_checkpoint(self, model, trial):
        """Write into OUTPUT/.staging/checkpoint-N, then rename into place: resuming only ever finds complete
        checkpoints, whenever the run is killed or the disk fills up."""
        run_dir = Path(self._get_output_dir(trial=trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self.skipped.merge_processes()
        try:
            self._stage_checkpoint(model, trial, run_dir, run_dir / STAGING / name)
        except (OSError, RuntimeError) as error:
            if not out_of_space(error):
                raise
            shutil.rmtree(run_dir / STAGING / name, ignore_errors=True)  # frees what the partial save took
            raise no_space(run_dir, name) from error
        if self.args.should_save:
            if (run_dir / name).exists():
                shutil.rmtree(run_dir / name)
            os.replace(run_dir / STAGING / name, run_dir / name)
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _stage_checkpoint(self, model, trial, run_dir: Path, staged: Path) -> None:
        """The Trainer's checkpoint, the processor and the run state, all under OUTPUT/.staging."""
        self._get_output_dir = lambda trial=None: str(run_dir / STAGING)  # shadows the method for this save only
        try:
            super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir
        self.accelerator.wait_for_everyone()
        if self.args.should_save:  # the processor too, so `diffusionvl generate OUTPUT/checkpoint-N` works
            self.processor.save_pretrained(staged)
            state = {**self.skipped.summary(), "skipped": self.skipped.reasons}
            (staged / RUN_STATE).write_text(json.dumps(state))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Resume through the strict loader: transformers' own resume path reads the file without the key
        conversion some architectures (Qwen2.5-VL) save with, and only warns when weights do not match. Under
        FSDP or DeepSpeed the weights are sharded across processes: the Trainer's own path loads each shard."""
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        target = model if model is not None else self.model
        target.load_state_dict(load_any(resume_from_checkpoint).state_dict())


class TrainingProgress(ProgressCallback):
    """The Trainer's progress bar (steps, ETA) with loss, mean noise level and tokens/s as its postfix, instead
    of one printed dict per log; every log still goes to metrics.jsonl."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
            shown = {"loss": f"{logs['loss']:.4f}", "tok/s": f"{logs.get('tokens_per_second', 0):.0f}"}
            if "noise_level" in logs:
                shown["t"] = f"{logs['noise_level']:.2f}"
            self.training_bar.set_postfix(shown)


def _step(line: str) -> int | None:
    """A metrics line's step; None for a line a kill cut short."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return None


class MetricsFile(TrainerCallback):
    """Every log line, with its step, appended to OUTPUT/metrics.jsonl by the main process."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        """Keep the lines up to the step the run starts from: a resumed run replays the steps after its
        checkpoint (and a kill may have cut the last line short); a fresh run starts the file anew."""
        if state.is_world_process_zero and self.path.is_file():
            lines = self.path.read_text().splitlines()
            kept = [line + "\n" for line in lines if (step := _step(line)) is not None and step <= state.global_step]
            self.path.write_text("".join(kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def load_for_training(config: TrainingConfig):
    """The model and processor (or bare tokenizer, for a text LM) at `config.model`, with the parts of this stage
    trainable."""
    autoregressive = config.stage == "autoregressive"
    model = load_any(config.model) if autoregressive else load_model(config.model)
    if config.stage == "projector":
        inner = model.model if isinstance(model, DiffusionVL) else model
        if not isinstance(inner, VisionLanguageModel):
            raise DiffusionVLError("stage 'projector' trains the projector of a vision encoder + LM model; "
                                   f"{config.model} holds a {type(inner).__name__}.")
    elif not autoregressive and not isinstance(model, DiffusionVL):
        raise DiffusionVLError(f"stage 'diffusion' needs a DiffusionVL checkpoint; translate {config.model} first "
                               "(diffusionvl convert, or DiffusionVL.from_autoregressive).")
    if config.noise_pattern and isinstance(model, DiffusionVL):
        model.config.noise_pattern = config.noise_pattern  # saved with every checkpoint, so a resume keeps it
    if config.lora_rank and not model.config.lora:
        add_lora(model, config.lora_rank, config.lora_alpha, config.lora_targets.split(","), scope=config.lora_scope)
    set_trainable(model, config)
    return model, load_processor(config.model, autoregressive=autoregressive)


def model_positions(model) -> int | None:
    """How many positions the model has (the base config's text config): longer samples are skipped."""
    if isinstance(model, DiffusionVL):
        return model.max_positions
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


def prepare(config: TrainingConfig):
    """Every check a run can fail before it writes anything, in order of cost: data file, output path, image
    folder, checkpoint to resume, model, and a first usable record. Returns (model, processor, dataset, resume)."""
    records = read_llava(config.data)
    output = Path(config.output_dir)
    preflight.check_output_dir(output)
    preflight.check_image_files(records, config.data, config.image_folder)
    resume_from = get_last_checkpoint(str(output)) if config.resume and output.is_dir() else None
    if config.resume and resume_from is None:
        raise FileNotFoundError(f"--resume: no complete checkpoint in {output}; start without --resume.")
    model, processor = load_for_training(config)
    preflight.check_image_support(records, config.data, processor)
    preflight.check_chat_template(processor, config.model)
    text_only = getattr(processor, "image_processor", None) is None
    dataset = LlavaDataset(records, TokenizerOnlyProcessor(processor) if text_only else processor,
                           config.image_folder, config.max_length, model_positions(model))
    dataset[0]  # finds the first usable record, so 'no usable record' fails now rather than mid-run
    return model, processor, dataset, resume_from


def check_sharded_resume(trainer, resume_from) -> None:
    """Refuse --resume under FSDP or DeepSpeed. Their sharded checkpoints load through the Trainer's own code
    (`_load_from_checkpoint` hands them back), but that resume has never been run here: the Trainer runs FSDP only
    on GPUs (on a CPU it falls back to DDP), so an exact resume is not something this library can promise yet."""
    if resume_from is None or not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        return
    kind = "FSDP" if trainer.is_fsdp_enabled else "DeepSpeed"
    raise DiffusionVLError(f"--resume under {kind} is not supported yet: resuming its sharded checkpoints has not "
                           "been verified to continue the run exactly. Start the run afresh (without --resume), or "
                           "train with DDP (configs/accelerate/ddp.yaml) or one process, where --resume is exact.")


def frozen_teacher(model, config: TrainingConfig):
    """The source a full finetune distils from: a frozen copy of the model as training starts (for a translation,
    its source; on --resume the same, since the run starts again from config.model), in bf16 where the hardware
    computes it natively, else fp32. A LoRA finetune needs none: its base with the adapters off is the source."""
    if not config.distill_weight or config.lora_rank or config.stage != "diffusion":
        return None
    dtype = torch.bfloat16 if native_bf16() else torch.float32
    return copy.deepcopy(model).to(dtype).eval().requires_grad_(False)


def make_output(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DiffusionVLError(f"--output-dir {output} cannot be created ({error.strerror or error}).") from error
    shutil.rmtree(output / STAGING, ignore_errors=True)  # what a killed save left behind


def train(config: TrainingConfig, callbacks: list | None = None) -> DiffusionTrainer:
    """Run (or resume) a training run; returns the trainer, whose state holds the log history. On a finished
    run, `--resume` trains nothing and `trainer.finished` says so."""
    model, processor, dataset, resume_from = prepare(config)
    output = Path(config.output_dir)
    make_output(output)
    tokenizer = getattr(processor, "tokenizer", processor)
    trainer = DiffusionTrainer(
        model=model, args=training_arguments(config), train_dataset=dataset,
        data_collator=partial(collate, pad_token_id=tokenizer.pad_token_id or 0),  # pads are masked: any id does
        callbacks=[MetricsFile(output / "metrics.jsonl"), *(callbacks or [])], run=config, processor=processor,
        teacher=frozen_teacher(model, config),
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(TrainingProgress())
    check_sharded_resume(trainer, resume_from)
    if resume_from is not None and (Path(resume_from) / RUN_STATE).is_file():  # the skips so far, counted once
        trainer.skipped = SkippedRecords(json.loads((Path(resume_from) / RUN_STATE).read_text()).get("skipped"))
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except RunFinished as finished:
        trainer.finished = str(finished)
        return trainer
    if trainer.args.should_save and getattr(model.config, "lora", None) and model.config.lora_scope == "all":
        merge_lora(model)  # a plain DiffusionVL that loads anywhere, beside the adapter checkpoints; draft-only
        # adapters stay unmerged: the last checkpoint is the model
        model.save_pretrained(output / "merged")
        processor.save_pretrained(output / "merged")
    if trainer.args.should_save:
        (output / "run.json").write_text(json.dumps({**asdict(config), **trainer.skipped.summary()}))
    return trainer


def main(args) -> None:
    config = TrainingConfig(**{spec.name: getattr(args, spec.name) for spec in fields(TrainingConfig)})
    trainer = train(config)
    leave_together()  # after success only: a rank that failed alone must not wait for the others
    if trainer.finished:
        print(trainer.finished)
        return
    print(f"done: {trainer.state.global_step} steps, {trainer.skipped}; checkpoints in {config.output_dir}")


def leave_together() -> None:
    """Ranks of a distributed run exit together. When one rank's interpreter shuts down while another still
    talks to it, gloo aborts that rank ('terminate called without an active exception') after the work is done
    (about one CPU run in four without this barrier, none in 24 with it). Destroying the process group here
    instead made ranks hang at exit."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
