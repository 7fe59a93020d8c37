"""lmms-eval's `--model diffusionvl` (diffusionvl/evaluation/lmms.py) on the shipped minivl-dvlm.

The adapter is driven with lmms-eval's own `Instance` objects, laid out as its tasks lay out generate_until
requests: (context, gen_kwargs, doc_to_visual, doc_id, task, split), the documents in `task_dict[task][split]`.
Every test but the first needs lmms-eval and is skipped without it. lmms-eval's own requirements include
torchvision, so it is installed without them, plus what its model API and evaluator import (tested with 0.7.3):

    pip install --no-deps lmms-eval==0.7.3
    pip install pytz loguru evaluate datasets sacrebleu tenacity pytablewriter "filelock<4"

The Instance tests need the first three; the end-to-end command needs them all (lmms-eval 0.7.3's evaluator patches
`filelock._api`, which filelock 4 removed), and is skipped without them.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusionvl.decoding.config import DecodingConfig
from diffusionvl.inference import answer, chat_inputs  # bound here: the reference never goes through the spy below

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny matrices, one thread

ROOT = Path(__file__).resolve().parent.parent


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules[name] is None, as the first test arranges
        return False


HAS_LMMS = _installed("lmms_eval")
needs_lmms = pytest.mark.skipif(not HAS_LMMS, reason="lmms-eval is not installed (see this file's docstring "
                                "for the pip commands)")
TASK, SPLIT = "minivl", "test"
LONG = 32  # tokens: enough for a whole MiniVL caption


def _child_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_without_lmms_eval_diffusionvl_imports_and_the_adapter_names_the_install():
    code = ("import sys; sys.modules['lmms_eval'] = None\n"  # None in sys.modules: `import lmms_eval` fails
            "import diffusionvl, diffusionvl.evaluation, diffusionvl.evaluation.metrics\n"
            "import diffusionvl.evaluation.lmms\n")
    run = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=_child_env(),
                         timeout=300)
    assert run.returncode != 0
    assert "MissingExtraError: the lmms-eval adapter needs lmms_eval: pip install 'diffusionvl[lmms]'" in run.stderr
    assert "pip install --no-deps lmms-eval==0.7.3" in run.stderr


@pytest.fixture(scope="module")
def docs():
    from diffusionvl.minivl.generator import generate

    samples = generate("caption", "test", 0, 3) + generate("count", "test", 0, 2) + generate("chart", "test", 0, 1)
    return [{"image": s.image, "question": s.question, "answer": s.answer} for s in samples]


@pytest.fixture(scope="module")
def adapter(docs):
    from diffusionvl.evaluation.lmms import DiffusionVLLmms

    lm = DiffusionVLLmms(pretrained="minivl-dvlm", batch_size=2, device="cpu", max_new_tokens=LONG)
    lm.task_dict = {TASK: {SPLIT: docs}}  # what lmms-eval's evaluator sets before it sends requests
    return lm


def image_of(doc):
    return [doc["image"]]


def request(doc_id: int, gen_kwargs: dict, context: str | None = None, doc_to_visual=image_of,
            kind: str = "generate_until"):
    from lmms_eval.api.instance import Instance

    return Instance(request_type=kind, arguments=(context, dict(gen_kwargs), doc_to_visual, doc_id, TASK, SPLIT),
                    idx=0, metadata={"task": TASK, "doc_id": doc_id, "repeats": 1})


def questions(lm, ids, gen_kwargs, **options):
    docs = lm.task_dict[TASK][SPLIT]
    return [request(i, gen_kwargs, docs[i]["question"], **options) for i in ids]


@pytest.fixture
def calls(monkeypatch):
    """Every `inference.answer` call of the adapter: (rows in the batch, images in it, config, new token rows)."""
    from diffusionvl import inference

    seen, real = [], inference.answer

    def spy(model, processor, inputs, config, **kwargs):
        out = real(model, processor, inputs, config, **kwargs)
        images = len(inputs["image_grid_thw"]) if "image_grid_thw" in inputs else 0
        seen.append((len(inputs["input_ids"]), images, config, out.rows))
        return out

    monkeypatch.setattr(inference, "answer", spy)
    return seen


def one_by_one(lm, docs, max_new_tokens: int = LONG) -> list[str]:
    """The reference: each document alone, straight through chat_inputs and answer."""
    config = DecodingConfig.from_options(lm.decoding, max_new_tokens=max_new_tokens)
    return [answer(lm.model, lm.processor, chat_inputs(lm.processor, [d["question"]], [[d["image"]]]), config).texts[0]
            for d in docs]


@needs_lmms
def test_registered_as_diffusionvl_in_the_registry_lmms_eval_reads():
    import lmms_eval.models
    from lmms_eval.api.model import lmms

    from diffusionvl.evaluation.lmms import MANIFEST, DiffusionVLLmms

    assert lmms_eval.models.get_model("diffusionvl") is DiffusionVLLmms
    assert issubclass(DiffusionVLLmms, lmms) and DiffusionVLLmms.is_simple
    assert MANIFEST.simple_class_path == "diffusionvl.evaluation.lmms.DiffusionVLLmms"  # the entry point's target


@needs_lmms
def test_batches_group_by_gen_kwargs_and_answers_keep_request_order(adapter, docs, calls):
    greedy, also_greedy = {"max_new_tokens": LONG}, {"max_new_tokens": LONG, "temperature": 0}
    ids = [5, 0, 3, 1, 4, 2]
    requests = questions(adapter, ids, greedy)
    for n in (1, 3, 5):  # interleave a second group: the same decoding, other generation_kwargs
        requests[n] = questions(adapter, [ids[n]], also_greedy)[0]
    answers = adapter.generate_until(requests)
    assert [c[0] for c in calls] == [2, 1, 2, 1]  # batch_size 2 within each group of three
    assert answers == one_by_one(adapter, [docs[i] for i in ids])  # batched, regrouped, back in order
    assert any("," in a for a in answers)  # long enough to exercise the stop strings below


@needs_lmms
def test_until_cuts_each_answer_at_its_earliest_stop_string(adapter, docs, calls):
    stops = [",", " at "]
    full = one_by_one(adapter, docs)
    answers = adapter.generate_until(questions(adapter, range(len(docs)), {"max_new_tokens": LONG, "until": stops}))
    assert answers == [re.split("|".join(map(re.escape, stops)), text)[0].strip() for text in full]
    assert answers[0] != full[0] and calls[0][2].stop_strings == tuple(stops)  # decoding stops at them too
    single = adapter.generate_until(questions(adapter, [1], {"max_new_tokens": LONG, "until": ","}))
    assert single == [full[1].split(",")[0]]


@needs_lmms
def test_speculative_decoding_through_lmms_eval_answers_as_the_causal_mode(adapter, docs, calls):
    """remasking_strategy=speculative in model_args: batched answers, cut at `until`, equal the causal mode's
    greedy answers decoded one by one (minivl-dvlm has causal context); a sampled task is refused with the why."""
    from diffusionvl.decoding.reference import reference_causal_decode
    from diffusionvl.errors import DiffusionVLError
    from diffusionvl.evaluation.lmms import DiffusionVLLmms
    from diffusionvl.inference import texts_of
    from diffusionvl.model import vision_inputs

    lm = DiffusionVLLmms(pretrained="minivl-dvlm", batch_size=3, device="cpu", max_new_tokens=LONG,
                         remasking_strategy="speculative")
    lm.task_dict = adapter.task_dict
    answers = lm.generate_until(questions(lm, range(len(docs)), {"max_new_tokens": LONG, "until": " at "}))
    expected = []
    for doc in docs:
        inputs = chat_inputs(lm.processor, [doc["question"]], [[doc["image"]]])
        ids, vision = inputs["input_ids"], vision_inputs(inputs["pixel_values"], inputs["image_grid_thw"])
        out = reference_causal_decode(lm.model, ids, torch.ones_like(ids, dtype=torch.bool), vision, LONG)
        expected += texts_of(lm.processor.tokenizer, out.rows)
    assert answers == [text.split(" at ")[0].strip() for text in expected]
    assert calls and all(c[2].speculative for c in calls) and any(" at " in text for text in expected)
    with pytest.raises(DiffusionVLError, match="speculative decoding is greedy"):
        lm.generate_until(questions(lm, [0], {"max_new_tokens": LONG, "temperature": 0.7, "do_sample": True}))


@needs_lmms
def test_max_new_tokens_comes_from_gen_kwargs_else_model_args(adapter, calls):
    adapter.generate_until(questions(adapter, [0, 1], {"max_new_tokens": 3}))
    adapter.generate_until(questions(adapter, [0, 1], {}))
    (_, _, short, short_rows), (_, _, default, default_rows) = calls
    assert short.max_new_tokens == 3 and all(len(row) <= 3 for row in short_rows)
    assert default.max_new_tokens == LONG and max(len(row) for row in default_rows) > 3


@needs_lmms
def test_images_come_from_doc_to_visual_of_the_task_document(adapter, docs, calls, tmp_path):
    seen = []

    def recording(doc):
        seen.append(doc["question"])
        return [[doc["image"]]]  # nested, as some tasks return

    docs[4]["image"].save(tmp_path / "count.png")
    expected = one_by_one(adapter, [docs[3], docs[4]])
    answers = adapter.generate_until([
        request(3, {}, "<image>\n" + docs[3]["question"], doc_to_visual=recording),  # lmms-eval's placeholder
        request(4, {}, docs[4]["question"], doc_to_visual=lambda doc: [str(tmp_path / "count.png")]),  # a path
    ])
    assert answers == expected
    assert seen == [docs[3]["question"]] and calls[0][:2] == (2, 2)  # two rows, one image each
    no_image = adapter.generate_until([request(0, {"max_new_tokens": 4}, "Describe the image.", doc_to_visual=None)])
    assert calls[1][:2] == (1, 0) and isinstance(no_image[0], str)


@needs_lmms
def test_sampling_options_of_gen_kwargs(adapter):
    sampled = adapter.decoding_config({"temperature": 0.7, "top_p": 0.9, "do_sample": True})
    assert (sampled.temperature, sampled.top_p) == (0.7, 0.9)
    greedy = adapter.decoding_config({"temperature": 0.7, "do_sample": False, "top_p": 0, "num_beams": 1})
    assert (greedy.temperature, greedy.top_p) == (0.0, None)  # do_sample=False wins; top_p 0 is no cut
    assert adapter.decoding_config({"until": "\n\n"}).stop_strings == ("\n\n",)


@needs_lmms
def test_loglikelihood_and_multi_round_say_why_they_are_not_supported(adapter):
    with pytest.raises(NotImplementedError, match="block-diffusion model .* no exact\\s+left-to-right"):
        adapter.loglikelihood([request(0, {}, "Describe the image.", kind="loglikelihood")])
    with pytest.raises(NotImplementedError, match="multi-round"):
        adapter.generate_until_multi_round([])


@needs_lmms
def test_model_args_are_parsed_to_their_types_and_win_over_the_command_line():
    from diffusionvl.errors import DiffusionVLError
    from diffusionvl.evaluation.lmms import DiffusionVLLmms

    args = ("pretrained=minivl-dvlm,batch_size=3,steps=4,remasking_strategy=threshold,confidence_threshold=0.8,"
            "max_new_tokens=6,top_k=none,use_cache=true,dtype=float32")
    lm = DiffusionVLLmms.create_from_arg_string(args, {"batch_size": 1, "max_batch_size": None, "device": "cpu"})
    assert (lm.batch_size, lm.device, lm.pretrained) == (3, "cpu", "minivl-dvlm")
    d = lm.decoding
    assert (d.steps, d.remasking_strategy, d.confidence_threshold, d.max_new_tokens, d.top_k, d.use_cache) == (
        4, "threshold", 0.8, 6, None, True)
    assert DiffusionVLLmms(steps="2", use_cache="False", device="cpu").decoding.use_cache is False
    with pytest.raises(DiffusionVLError, match="batch_size must be a positive integer"):
        DiffusionVLLmms(batch_size=2.5)
    for bad, message in [("step=4", "unknown model_args"), ("batch_size=auto", "'auto' is not supported"),
                         ("steps=x", "steps='x'"), ("dtype=int8", "dtype must be")]:
        with pytest.raises(DiffusionVLError, match=message):
            DiffusionVLLmms.create_from_arg_string(f"pretrained=does-not-exist,{bad}")  # fails before loading


def _evaluator_missing() -> str | None:
    if not HAS_LMMS:
        return "lmms-eval is not installed"
    missing = [name for name in ("evaluate", "sacrebleu", "tenacity", "pytablewriter") if not _installed(name)]
    if missing:
        return f"lmms-eval's evaluator needs {', '.join(missing)} (pip install {' '.join(missing)})"
    if not _installed("filelock._api"):
        return "lmms-eval 0.7.3's evaluator patches filelock._api, which filelock 4 removed (pip install 'filelock<4')"
    return None


@pytest.mark.skipif(_evaluator_missing() is not None, reason=str(_evaluator_missing()))
def test_lmms_eval_command_runs_the_local_minivl_task(adapter, tmp_path):
    """`python -m diffusionvl.evaluation.lmms` (lmms-eval's own command line, `diffusionvl` registered) on the
    four-sample task of examples/lmms, batch size 2; its logged answers are the adapter's."""
    command = [sys.executable, "-m", "diffusionvl.evaluation.lmms", "--model", "diffusionvl", "--model_args",
               "pretrained=minivl-dvlm,batch_size=2", "--device", "cpu", "--tasks", "minivl_lmms", "--include_path",
               str(ROOT / "examples" / "lmms"), "--output_path", str(tmp_path), "--log_samples", "--verbosity", "DEBUG"]
    run = subprocess.run(command, check=False, capture_output=True, text=True, env=_child_env(), timeout=600,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert re.search(r"\|minivl_lmms\|none\s*\|\s*0\|exact_match\|", run.stdout)
    (results,) = tmp_path.glob("*/*_results.json")
    score = json.loads(results.read_text())["results"]["minivl_lmms"]["exact_match,none"]
    (samples,) = tmp_path.glob("*/*_samples_minivl_lmms.jsonl")
    logged = [json.loads(line) for line in samples.read_text().splitlines()]
    import datasets

    docs = list(datasets.load_dataset("parquet", data_files=str(ROOT / "examples/lmms/minivl_lmms.parquet"))["train"])
    expected = [text.split("\n")[0] for text in one_by_one(adapter, docs, max_new_tokens=8)]
    assert [s["filtered_resps"] for s in sorted(logged, key=lambda s: s["doc_id"])] == expected
    assert score == pytest.approx(sum(e.lower() == d["answer"].lower() for e, d in zip(expected, docs)) / len(docs))
