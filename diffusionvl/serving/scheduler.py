"""Continuous batching: one thread runs the engine for every request in flight.

Requests wait in a queue; before each block the loop admits as many as the batch has room for into a decoder
(`engine.BlockDecoder.admit`: prefilled, lined up with the running rows), steps every decoder by one block and
hands each request its new tokens. A request leaves its decoder when it is finished, cancelled (the client went
away) or past its deadline, without waiting for the others. Requests whose settings cannot share a forward
(steps, policy, sampling, a sampling seed) get decoders of their own, stepped in turn.
"""

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from ..decoding.config import DecodingConfig
from ..decoding.engine import BlockDecoder
from ..decoding.prompts import build_prompts
from ..decoding.rows import Row
from ..decoding.speculative import VERDICTS
from ..modeling.backbones import VisionInputs
from .protocol import APIError


@dataclass
class Job:
    """One request in flight. `send(kind, payload)` is called from the engine thread: ("step", {block, step,
    ids, masked, prompt[, verdict]}) with trace (the row's block number, the step in it, the block's ids, which are
    masks, which hold prompt tokens; a speculative step adds each position's verdict, speculative.VERDICTS),
    ("tokens", new ids), ("done", finish reason), ("error", APIError)."""

    ids: torch.Tensor  # (1, L)
    vision: object
    config: DecodingConfig
    send: object
    trace: bool = False
    seed: int | None = None
    deadline: float = float("inf")
    cancelled: bool = False
    tokens: int = 0
    forwards: int = 0  # forwards this request took part in
    arrived: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple:
        """Settings a decoder's rows share; a seeded sampled request decodes alone, so its seed reproduces it."""
        c = self.config
        alone = id(self) if c.temperature > 0 and self.seed is not None else None
        return c.steps, str(c.remasking_strategy), c.confidence_threshold, c.temperature, c.top_k, c.top_p, alone


class Group:
    """A decoder and the jobs of its rows."""

    def __init__(self, model, job: Job, tokenizer, verifier=None):
        generator = torch.Generator(model.device).manual_seed(job.seed) if job.seed is not None else None
        self.decoder = BlockDecoder(model, job.config, tokenizer, generator, observer=self.observe,
                                    verifier=verifier if job.config.speculative else None)
        self.decoder.on_tokens = self.release  # speculative: tokens go out by accepted run
        self.jobs: dict[int, Job] = {}

    def release(self, row: Row, new: list[int]) -> None:
        """A row's new tokens, from its block's commit or, speculative, as soon as a verification decides them
        (engine.BlockDecoder.on_tokens): counted, and sent unless the client went away."""
        job = self.jobs.get(row.id)
        if job is not None:
            job.tokens, job.forwards = job.tokens + len(new), row.forwards
            if new and not job.cancelled:
                job.send("tokens", new)

    def observe(self, rows: list[Row], step: int, block: torch.Tensor, masked: torch.Tensor,
                verdict: torch.Tensor | None = None) -> None:
        prompt = self.decoder.batch.fixed  # (n, B): positions of a first block that hold the prompt's last tokens
        for index, row in enumerate(rows):
            job = self.jobs.get(row.id)
            if job is not None and job.trace:
                fixed = [False] * block.shape[1] if prompt is None else prompt[index].tolist()
                number = len(row.block_steps)  # blocks this row finished before this one
                step_trace = dict(block=number, step=step, ids=block[index].tolist(), masked=masked[index].tolist(),
                                  prompt=fixed)
                if verdict is not None:
                    step_trace["verdict"] = [None if hidden or own else VERDICTS[kind] for kind, hidden, own
                                             in zip(verdict[index].tolist(), step_trace["masked"], fixed)]
                job.send("step", step_trace)


class Scheduler:
    """The engine loop. `submit` is called from request handlers; everything else runs on the loop's thread."""

    def __init__(self, model, tokenizer, max_batch: int, max_queue: int, metrics=None, verifier=None):
        self.model, self.tokenizer, self.metrics = model, tokenizer, metrics
        self.verifier = verifier  # checks speculative drafts (DiffusionVL.as_verifier); None: the causal mode
        self.max_batch, self.max_queue = max_batch, max_queue
        self.waiting: deque[Job] = deque()
        self.groups: dict[tuple, Group] = {}
        self.wake = threading.Condition()
        self.running = False
        self.thread: threading.Thread | None = None

    @property
    def active(self) -> int:
        """Rows being decoded. Read from request handlers too: list() copies the groups in one step (under the
        GIL), where a generator over the dict could see the engine thread add or drop a group mid-iteration."""
        return sum(len(group.decoder.batch) for group in list(self.groups.values()))

    def submit(self, job: Job) -> None:
        with self.wake:
            if len(self.waiting) >= self.max_queue:
                raise APIError(503, f"the server is busy: {len(self.waiting)} requests are waiting; retry shortly.",
                               code="queue_full", kind="server_error")
            self.waiting.append(job)
            self.wake.notify()

    def start(self) -> None:
        self.running = True
        self.thread = threading.Thread(target=self._loop, name="diffusionvl-engine", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self.wake:
            self.running = False
            self.wake.notify()
        if self.thread is not None:
            self.thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        """Whether the engine thread is running (/health says 503 when it is not)."""
        return self.thread is not None and self.thread.is_alive()

    def _loop(self) -> None:
        with torch.inference_mode():
            while self.running:
                with self.wake:
                    while self.running and not self.waiting and not self.groups:
                        self.wake.wait(timeout=1.0)
                try:
                    self._iteration()
                except Exception as error:  # noqa: BLE001 - outside any one decoder: answer every request in flight
                    # with the error rather than leave them hanging, and go on serving
                    for key, group in list(self.groups.items()):
                        self._fail(key, group, [], error)

    def _iteration(self) -> None:
        """Admit what fits, then one block for every decoder. Failures of one decoder stay in that decoder."""
        self._admit()
        if self.metrics is not None:
            self.metrics.observe_load(len(self.waiting), self.active)  # the rows about to be stepped
        for key, group in list(self.groups.items()):
            self._drop_cancelled(group)
            if len(group.decoder.batch):
                self._step(key, group)
            if key in self.groups and not len(group.decoder.batch):
                del self.groups[key]
        if self.metrics is not None and not self.groups:
            self.metrics.observe_load(len(self.waiting), 0)

    def _admit(self) -> None:
        """Move waiting jobs into decoders while the batch has room; prompts are embedded here (the engine's
        thread), so the model never runs on two threads."""
        joining: dict[tuple, list[Job]] = {}
        room = self.max_batch - self.active
        with self.wake:
            while self.waiting and room > 0:
                job = self.waiting.popleft()
                if job.cancelled or self._expired(job):
                    continue
                joining.setdefault(job.key, []).append(job)
                room -= 1
        for key, jobs in joining.items():
            group = self.groups.get(key)
            try:
                group = group or Group(self.model, jobs[0], self.tokenizer, self.verifier)
                jobs, prompts = self._prompts(jobs)
                if not jobs:
                    continue
                checked = None if group.decoder.verifier is None else build_prompts(self.verifier,
                                                                                    *self._batch(jobs))
                rows = group.decoder.admit(prompts, [job.config.max_new_tokens for job in jobs],
                                           [job.config.stop_strings for job in jobs], checked)
            except Exception as error:  # noqa: BLE001 - the decoder is in an unknown state: fail its rows
                self._fail(key, group, jobs, error)
                continue
            group.jobs.update((row.id, job) for row, job in zip(rows, jobs))
            self.groups[key] = group

    def _step(self, key: tuple, group: Group) -> None:
        try:
            self._deliver(group, group.decoder.step())
        except Exception as error:  # noqa: BLE001 - the loop serves the other decoders and later requests
            self._fail(key, group, list(group.jobs.values()), error)

    def _fail(self, key: tuple, group: Group | None, jobs: list[Job], error: Exception) -> None:
        """An unexpected engine error: every request of the decoder (None: not built yet) gets a 500 and the decoder
        is dropped."""
        running = [] if group is None else list(group.jobs.values())
        for job in {id(job): job for job in [*running, *jobs]}.values():
            job.send("error", APIError(500, f"the engine failed on this batch: {type(error).__name__}: {error}",
                                       code="engine_error", kind="server_error"))
        self.groups.pop(key, None)

    def _prompts(self, jobs: list[Job]) -> tuple[list[Job], list]:
        """The jobs' prompts, embedded in one call (one vision-encoder forward for all their images); if that fails,
        one call per job, so that a bad request is answered with its error and the others go on."""
        try:
            return jobs, build_prompts(self.model, *self._batch(jobs))
        except Exception:  # noqa: BLE001 - find the culprit below
            pass
        good, prompts = [], []
        for job in jobs:
            try:
                prompts += build_prompts(self.model, *self._batch([job]))
                good.append(job)
            except Exception as error:  # noqa: BLE001 - one bad request must not stop the loop
                job.send("error", APIError(400, f"the request could not be prepared: {error}"))
        return good, prompts

    def _batch(self, jobs: list[Job]) -> tuple[torch.Tensor, torch.Tensor, VisionInputs | None]:
        """Right-padded ids (n, L), their valid mask and the images of all jobs, in order."""
        width = max(job.ids.shape[1] for job in jobs)
        ids = torch.zeros(len(jobs), width, dtype=torch.long)
        valid = torch.zeros(len(jobs), width, dtype=torch.bool)
        for row, job in enumerate(jobs):
            ids[row, : job.ids.shape[1]], valid[row, : job.ids.shape[1]] = job.ids[0], True
        images = [job.vision for job in jobs if job.vision is not None]
        vision = None
        if images:
            grids = [image.image_grid_thw for image in images]
            vision = VisionInputs(torch.cat([image.pixel_values for image in images]).to(self.model.device),
                                  None if grids[0] is None else torch.cat(grids).to(self.model.device))
        return ids.to(self.model.device), valid.to(self.model.device), vision

    def _expired(self, job: Job) -> bool:
        if time.monotonic() < job.deadline:
            return False
        job.cancelled = True  # answered now; its row leaves at the end of the block
        job.send("error", APIError(408, "the request timed out before it finished; ask for fewer tokens or retry.",
                                   code="timeout", kind="timeout"))
        return True

    def _drop_cancelled(self, group: Group) -> None:
        for row, job in list(group.jobs.items()):
            if job.cancelled or self._expired(job):
                group.decoder.cancel(row)

    def _deliver(self, group: Group, updates: list[tuple[Row, list[int]]]) -> None:
        for row, new in updates:
            group.release(row, new)
            job = group.jobs[row.id]
            if row.finished:
                if not job.cancelled:  # OpenAI's finish_reason: 'length' at max_tokens, else 'stop'
                    job.send("done", "length" if row.finish_reason == "length" else "stop")
                if self.metrics is not None:
                    self.metrics.observe_request(job)
                del group.jobs[row.id]
