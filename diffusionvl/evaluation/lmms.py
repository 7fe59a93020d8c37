"""lmms-eval's `--model diffusionvl`: a DiffusionVL (or its autoregressive source) on lmms-eval's benchmarks.

    python -m diffusionvl.evaluation.lmms --model diffusionvl \\
        --model_args pretrained=minivl-dvlm,batch_size=8,steps=8 --tasks TASK [any other lmms-eval flag]

lmms-eval (tested with 0.7.3) resolves `--model NAME` through its MODEL_REGISTRY_V2, which it builds from its own
model list and the Python entry points of group "lmms_eval.models" when `lmms_eval.models` is first imported; its
`register_model` decorator fills a legacy table that its evaluator no longer reads. So a name becomes usable in two
ways, both served here: this module's `python -m` launcher registers MANIFEST and then runs lmms-eval's own command
line, or an installed distribution declares the entry point `diffusionvl = "diffusionvl.evaluation.lmms:MANIFEST"`
and plain `python -m lmms_eval` / `lmms-eval` find the model themselves.

model_args: pretrained (a checkpoint folder or a shipped name such as minivl-dvlm; default minivl-dvlm),
batch_size (prompts decoded together; also lmms-eval's --batch_size, which model_args override), device (default
cuda when available), dtype (auto, float32, bfloat16, float16), and DecodingConfig's fields as defaults: steps,
remasking_strategy, confidence_threshold, max_new_tokens, temperature, top_k, top_p, use_cache, commit. A task's
generation_kwargs (max_new_tokens, temperature, top_p, do_sample, until) override them per request.

Only `generate_until` tasks run: see `loglikelihood` for why a block-diffusion model scores no continuation.
One process only: the requests are not split across ranks.
"""

import json
import operator

from ..errors import DiffusionVLError, require_extra

# diffusionvl itself never needs lmms-eval; only this adapter does (its own requirements pull torchvision, so it
# goes in without them, and the extra brings what it really imports)
require_extra("lmms", "the lmms-eval adapter", "lmms_eval", also="pip install --no-deps lmms-eval==0.7.3")
from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.api.model import lmms  # noqa: E402
from lmms_eval.api.registry import register_model  # noqa: E402
from lmms_eval.models.registry_v2 import ModelManifest  # noqa: E402

MODEL_NAME = "diffusionvl"
MANIFEST = ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__spec__.name}.DiffusionVLLmms")
_NONE = ("", "none", "null")


def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "1", "yes", "false", "0", "no"):
        raise ValueError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1", "yes")


# model_args arrive as text, or as what lmms-eval's parser made of it (8 -> int, True -> bool): text is converted
# to its field's type here, and DecodingConfig checks every value (it refuses 2.5 steps rather than rounding).
_DECODING_TYPES = {"max_new_tokens": int, "steps": int, "top_k": int, "remasking_strategy": str, "commit": str,
                   "confidence_threshold": float, "temperature": float, "top_p": float, "use_cache": _boolean}


def decoding_options(options: dict) -> dict:
    """model_args' decoding options, typed; an unknown name fails, naming the valid ones."""
    unknown = sorted(set(options) - set(_DECODING_TYPES))
    if unknown:
        raise DiffusionVLError(f"unknown model_args {unknown} for --model {MODEL_NAME}; valid: pretrained, "
                               f"batch_size, device, dtype, {', '.join(_DECODING_TYPES)}.")
    typed = {}
    for name, value in options.items():
        if isinstance(value, str) and value.strip().lower() in _NONE:
            typed[name] = None
            continue
        try:
            typed[name] = _DECODING_TYPES[name](value.strip()) if isinstance(value, str) else value
        except (TypeError, ValueError) as error:
            raise DiffusionVLError(f"model_args {name}={value!r}: {error}") from error
    return typed


def _batch_size(value) -> int:
    try:
        size = int(value) if isinstance(value, str) else operator.index(value)  # 2.5 fails rather than rounds
    except (TypeError, ValueError):
        size = 0
    if size <= 0 or isinstance(value, bool):
        raise DiffusionVLError(f"batch_size must be a positive integer (lmms-eval's 'auto' is not supported), "
                               f"got {value!r}.")
    return size


def stop_strings(until) -> tuple[str, ...]:
    """lmms-eval's `until` (None, a string or a list of strings) as a tuple of non-empty strings."""
    if until is None:
        return ()
    if isinstance(until, str):
        until = [until]
    if not all(isinstance(s, str) for s in until):
        raise DiffusionVLError(f"generation_kwargs until must be a string or a list of strings, got {until!r}.")
    return tuple(s for s in until if s)


def cut_at_stop(text: str, stops) -> str:
    """`text` up to the earliest occurrence of any stop string (the stop string itself dropped)."""
    ends = [text.find(stop) for stop in stops if stop in text]
    return text[: min(ends)].strip() if ends else text


def visual_images(visuals) -> list:
    """doc_to_visual's result (None, one image, or a possibly nested list) as a flat list of RGB PIL images.
    An image file path is opened; video and audio (other strings, dicts) are refused."""
    from PIL import Image

    if visuals is None:
        return []
    if not isinstance(visuals, (list, tuple)):
        visuals = [visuals]
    images = []
    for visual in visuals:
        if isinstance(visual, (list, tuple)):
            images += visual_images(visual)
        elif isinstance(visual, Image.Image):
            images.append(visual.convert("RGB"))
        elif isinstance(visual, str) and visual.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")):
            with Image.open(visual) as image:
                images.append(image.convert("RGB"))
        else:
            raise DiffusionVLError(f"--model {MODEL_NAME} takes images only; this task gave a {type(visual).__name__}"
                                   f" ({str(visual)[:80]!r}), which looks like video or audio.")
    return images


def _group(requests: list) -> dict:
    """Request indices grouped by their generation_kwargs (one DecodingConfig per batch), in first-seen order."""
    groups = {}
    for index, request in enumerate(requests):
        key = json.dumps(request.args[1] or {}, sort_keys=True, default=str)
        groups.setdefault(key, []).append(index)
    return groups


@register_model(MODEL_NAME)  # lmms-eval's legacy table, which its own models still fill; register() is what counts
class DiffusionVLLmms(lmms):
    """A DiffusionVL checkpoint (block decoding) or an autoregressive Qwen2.5-VL one, answering lmms-eval's
    generate_until requests in batches through `inference.chat_inputs` and `inference.answer`."""

    is_simple = True  # requests carry (context, gen_kwargs, doc_to_visual, doc_id, task, split)

    def __init__(self, pretrained: str = "minivl-dvlm", batch_size=8, device: str | None = None, dtype: str = "auto",
                 max_batch_size=None, **decoding):
        super().__init__()
        import torch

        from ..decoding.config import DecodingConfig
        from ..inference import load

        del max_batch_size  # lmms-eval passes it for batch_size=auto, which is refused
        self.batch_size = _batch_size(batch_size)
        self.decoding = DecodingConfig.from_options(**decoding_options(decoding))  # bad options fail before loading
        if dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise DiffusionVLError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}.")
        self.pretrained = str(pretrained)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.processor = load(self.pretrained, None if dtype == "auto" else getattr(torch, dtype),
                                          self.device)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """As lmms-eval's, except that model_args win over the command line's --batch_size and --device: lmms-eval
        always passes --batch_size (default 1), and `cls(**model_args, **those)` would fail on `batch_size` given
        twice."""
        from lmms_eval.utils import simple_parse_args_string

        extra = {key: value for key, value in (additional_config or {}).items() if value is not None}
        return cls(**{**extra, **simple_parse_args_string(arg_string)})

    def decoding_config(self, gen_kwargs: dict):
        """The DecodingConfig of one group of requests: model_args' defaults, overridden by the task's
        generation_kwargs. do_sample=False (or temperature 0) is greedy; top_p 0 or None means no nucleus cut."""
        from loguru import logger

        from ..decoding.config import DecodingConfig

        options = dict(gen_kwargs or {})
        if int(options.get("num_beams") or 1) > 1:
            logger.warning(f"{MODEL_NAME}: num_beams={options['num_beams']} ignored; block decoding has no beams.")
        temperature = options.get("temperature")
        if options.get("do_sample") is False:
            temperature = 0.0
        top_p = options.get("top_p")
        return DecodingConfig.from_options(self.decoding, max_new_tokens=options.get("max_new_tokens"),
                                           temperature=temperature, top_p=top_p or None,
                                           stop_strings=stop_strings(options.get("until")))

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """One answer per request, in request order; batches of `batch_size` requests that share generation_kwargs,
        each answer cut at the first of its `until` strings."""
        from tqdm.auto import tqdm

        answers = [None] * len(requests)
        with tqdm(total=len(requests), desc=MODEL_NAME, disable=self.rank != 0) as progress:
            for indices in _group(requests).values():
                config = self.decoding_config(requests[indices[0]].args[1])
                for start in range(0, len(indices), self.batch_size):
                    batch = indices[start: start + self.batch_size]
                    texts = self._answer([requests[i] for i in batch], config)
                    for index, text in zip(batch, texts):
                        # the engine stops a row at the block holding a stop string; the text is cut here, which
                        # also covers autoregressive checkpoints, whose decoding ignores stop strings
                        answers[index] = cut_at_stop(text, config.stop_strings)
                    progress.update(len(batch))
        return answers

    def _answer(self, requests: list[Instance], config) -> list[str]:
        from ..inference import answer, chat_inputs

        prompts, images = [], []
        for request in requests:
            context, _, doc_to_visual, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            images.append(visual_images(doc_to_visual(doc) if doc_to_visual is not None else None))
            # chat_inputs puts a prompt's images in front of its text, so lmms-eval's placeholders go
            prompts.append(context.replace("<image>", "").strip())
        return answer(self.model, self.processor, chat_inputs(self.processor, prompts, images), config).texts

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            f"--model {MODEL_NAME} cannot score loglikelihood requests (multiple-choice and perplexity tasks): a "
            "block-diffusion model predicts the masked tokens of a block in parallel, so it defines no exact "
            "left-to-right log-probability of a continuation, only a sampled lower bound (the ELBO) whose values "
            "are not comparable with an autoregressive model's. Use tasks with output_type: generate_until.")

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(f"--model {MODEL_NAME} does not run multi-round tasks yet; use tasks with "
                                  "output_type: generate_until.")


def register() -> None:
    """Make `--model diffusionvl` resolvable in this process (MODEL_REGISTRY_V2 is what lmms-eval reads)."""
    from lmms_eval import models

    registry = getattr(models, "MODEL_REGISTRY_V2", None)
    if registry is not None:  # None: lmms_eval.models is mid-import, and its entry-point scan is reading MANIFEST
        registry.register_manifest(MANIFEST, overwrite=True)


register()


def main() -> None:
    """lmms-eval's command line (`python -m lmms_eval ...`, its arguments unchanged) with `diffusionvl` registered."""
    from lmms_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
