"""The OpenAI-compatible server, through the official `openai` client on a real localhost socket: text, images,
streaming, errors in OpenAI's shape, limits, continuous batching (concurrent answers equal solo answers)."""

import base64
import io
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from diffusionvl.decoding.config import DecodingConfig
from diffusionvl.minivl.generator import generate
from diffusionvl.serving.cli import build
from diffusionvl.serving.config import ServerConfig
from diffusionvl.serving.local import serving

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL = "minivl-dvlm"
DECODING = DecodingConfig(max_new_tokens=32, steps=8, remasking_strategy="low_confidence_dynamic")


@pytest.fixture(scope="module")
def url():
    with serving(build(ServerConfig(decoding=DECODING, max_batch=8, max_image_pixels=512 * 512))) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)


def data_url(image, kind="PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    return f"data:image/{kind.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def image_message(sample) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(sample.image)}},
                                         {"type": "text", "text": sample.question}]}]


def ask(client, messages, **options) -> str:
    return client.chat.completions.create(model=MODEL, messages=messages, **options).choices[0].message.content


def test_models_health_and_metrics(url, client):
    assert [model.id for model in client.models.list()] == [MODEL]
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    ask(client, [{"role": "user", "content": "Describe the image."}], max_tokens=4)
    metrics = httpx.get(f"{url}/metrics").text
    for name in ("diffusionvl_requests_total", "diffusionvl_generated_tokens_total", "diffusionvl_row_forwards_total",
                 "diffusionvl_tokens_per_forward", "diffusionvl_queue_depth", "diffusionvl_batch_size"):
        assert name in metrics


def test_an_image_question_gets_the_answer_the_python_api_gives(client):
    """A greedy request that names no strategy is decoded speculatively (minivl-dvlm has a causal mode); one that
    names a strategy gets it."""
    from diffusionvl.inference import answer, chat_inputs, load

    model, processor = load(MODEL)
    speculative = DecodingConfig.from_options(DECODING, remasking_strategy="speculative")
    for sample in generate("caption", "test", 0, 2, 112):
        inputs = chat_inputs(processor, [sample.question], [[sample.image]])
        named = client.chat.completions.create(model=MODEL, messages=image_message(sample),
                                               extra_body={"remasking_strategy": "low_confidence_dynamic"})
        assert named.choices[0].message.content == answer(model, processor, inputs, DECODING).texts[0]
        reply = client.chat.completions.create(model=MODEL, messages=image_message(sample))
        direct = answer(model, processor, inputs, speculative)
        assert reply.choices[0].message.content == direct.texts[0] and reply.usage.nfe == direct.nfe
        assert reply.choices[0].finish_reason == "stop"
        assert reply.usage.completion_tokens == len(direct.rows[0]) and reply.usage.nfe >= 1
        assert reply.usage.model_extra["tokens_per_forward"] == pytest.approx(
            reply.usage.completion_tokens / reply.usage.nfe, abs=1e-4)


def test_with_a_separate_verifier_greedy_answers_are_the_verifiers_own(client):
    """`serve --verifier minivl-ar`: the dVLM drafts, minivl-ar checks; concurrent answers are minivl-ar's greedy
    answers (its transformers generate), token for token, where the dVLM's own causal mode differs on some."""
    from diffusionvl.benchmarks.lossless import generate_rows
    from diffusionvl.inference import chat_inputs, load, texts_of

    dvlm, processor = load(MODEL)
    ar, _ = load("minivl-ar")
    samples = generate("scene", "test", 4, 8, 112)  # the seventh: minivl-dvlm's causal mode answers otherwise
    with serving(build(ServerConfig(decoding=DECODING, max_batch=8, verifier="minivl-ar"))) as base:
        checked = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
        with ThreadPoolExecutor(len(samples)) as pool:
            replies = list(pool.map(lambda sample: checked.chat.completions.create(
                model=MODEL, messages=image_message(sample)), samples))
    own = [client.chat.completions.create(model=MODEL, messages=image_message(sample)) for sample in samples]
    expected = [texts_of(processor.tokenizer, generate_rows(ar, dvlm.special_tokens, chat_inputs(
        processor, [sample.question], [[sample.image]]), 32))[0] for sample in samples]
    assert [reply.choices[0].message.content for reply in replies] == expected
    assert [reply.choices[0].message.content for reply in own] != expected  # the control: its own causal mode


def test_plain_text_and_max_tokens(client):
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "system", "content": "Be brief."},
                                                                   {"role": "user", "content": "Describe the image."}],
                                           max_tokens=1)
    assert reply.usage.completion_tokens == 1 and reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content


def test_a_seeded_sampled_request_repeats_itself_and_max_completion_tokens_limits_it(client):
    sample = generate("caption", "test", 6, 1, 112)[0]
    options = dict(temperature=3.0, max_completion_tokens=12)  # hot enough that seeds give different answers
    first, again = (client.chat.completions.create(model=MODEL, messages=image_message(sample), seed=11, **options)
                    for _ in range(2))
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.usage.completion_tokens <= 12
    others = {client.chat.completions.create(model=MODEL, messages=image_message(sample), seed=seed,
                                             **options).choices[0].message.content for seed in (12, 13, 14)}
    assert others - {first.choices[0].message.content}  # the control: another seed, another answer


def test_streaming_sends_blocks_that_join_to_the_plain_answer_and_usage_at_the_end(client):
    sample = generate("caption", "test", 1, 1, 112)[0]
    plain = client.chat.completions.create(model=MODEL, messages=image_message(sample))
    chunks = list(client.chat.completions.create(model=MODEL, messages=image_message(sample), stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content and len(text.split()) > 3
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # one chunk per block
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_trace_streams_every_denoising_step(client):
    sample = generate("caption", "test", 2, 1, 112)[0]
    chunks = list(client.chat.completions.create(model=MODEL, messages=image_message(sample), stream=True,
                                                 stream_options={"include_usage": True},
                                                 extra_body={"trace": True,
                                                             "remasking_strategy": "low_confidence_static"}))
    steps = [c.model_extra["diffusion"] for c in chunks if "diffusion" in (c.model_extra or {})]
    assert len(steps) == chunks[-1].usage.model_extra["nfe"]  # one trace event per forward of this row
    assert all(len(step["tokens"]) == len(step["masked"]) == 8 for step in steps)
    # static, steps = B: one mask fills per step; the first block starts with the prompt's last tokens in place;
    # once the answer's end-of-turn is in, the last block's tail is filled at once
    for step in steps:
        masks = 8 - (sum(step["prompt"]) if step["block"] == 0 else 0) - step["step"] - 1
        last = step["block"] == steps[-1]["block"]
        assert sum(step["masked"]) <= masks if last else sum(step["masked"]) == masks
        assert step["tokens"].count(None) == sum(step["masked"])
    assert [step["block"] for step in steps] == sorted(step["block"] for step in steps) and steps[-1]["block"] >= 1


def test_a_speculative_trace_tells_drafts_accepted_and_the_verifiers_own_tokens(client):
    """The default (speculative) decode of a scene: each block is shown as drafted, then after each verification;
    masks and prompt tokens have no verdict, and the blocks as last shown spell the answer."""
    sample = generate("scene", "test", 3, 1, 112)[0]
    chunks = list(client.chat.completions.create(model=MODEL, messages=image_message(sample), stream=True,
                                                 stream_options={"include_usage": True}, extra_body={"trace": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    steps = [c.model_extra["diffusion"] for c in chunks if "diffusion" in (c.model_extra or {})]
    kinds = [kind for step in steps for kind in step["verdict"]]
    assert set(kinds) <= {None, "draft", "accepted", "corrected"} and kinds.count("accepted") > len(steps)
    for step in steps:
        assert all((kind is None) == (hidden or prompt)
                   for kind, hidden, prompt in zip(step["verdict"], step["masked"], step["prompt"]))
    last = {step["block"]: step for step in steps}
    shown = "".join(token for number in sorted(last) for token, prompt in zip(last[number]["tokens"],
                                                                             last[number]["prompt"]) if not prompt)
    assert shown.startswith(text) and len(text.split()) > 5
    pieces = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
    assert pieces > len(last)  # the text goes out by accepted run: some blocks in more than one piece


def test_stop_strings_end_the_answer_and_are_not_returned(client):
    sample = generate("caption", "test", 3, 1, 112)[0]
    full = ask(client, image_message(sample))
    word = full.split()[1]
    cut = ask(client, image_message(sample), stop=[word])
    assert cut == full[: full.index(word)]
    streamed = client.chat.completions.create(model=MODEL, messages=image_message(sample), stop=word, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == cut


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    return body["error"]


@pytest.mark.parametrize("body,status,param", [
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "frobnicate": 1}, 400, "frobnicate"),
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ({"model": MODEL, "messages": []}, 400, "messages"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": -1}, 400, "temperature"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}, 400, "max_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": 5}, 400, "stop"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": ["a", ""]}, 400, "stop"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}, 400, "max_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 400, "stream"),
    ({"model": MODEL, "messages": [{"role": "system", "content": "hi"}]}, 400, "messages"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400,
     "messages[0].content[0]"),
    ([1, 2], 400, None),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "remasking_strategy": "best"}, 400,
     "remasking_strategy"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}]}, 400,
     "messages[0].content[0]"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}]}, 400, "messages[0].content[0]"),
])
def test_bad_requests_get_openai_shaped_errors(url, body, status, param):
    response = httpx.post(f"{url}/v1/chat/completions", json=body)
    assert response.status_code == status
    assert error_of(response)["param"] == param


def test_malformed_json_oversized_images_and_unknown_routes(url, client):
    response = httpx.post(f"{url}/v1/chat/completions", content=b'{"model": ',
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and error_of(response)["code"] == "invalid_json"
    from PIL import Image

    big = Image.new("RGB", (1024, 1024), "white")  # over the fixture's 512 x 512 pixel limit
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(big)}}, {"type": "text", "text": "hi"}]}])
    assert caught.value.status_code == 413 and caught.value.body["code"] == "image_too_large"
    huge = httpx.post(f"{url}/v1/chat/completions", content=b" " * (ServerConfig().max_request_bytes + 1))
    assert huge.status_code == 413 and error_of(huge)["code"] == "request_too_large"
    assert httpx.get(f"{url}/v1/nothing").status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


def test_32_concurrent_requests_equal_each_request_alone_and_health_answers_throughout(url, client):
    samples = [s for task in ("count", "caption", "digits", "chart") for s in generate(task, "test", 7, 8, 112)]
    alone = [ask(client, image_message(s)) for s in samples]
    health, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            health.append(httpx.get(f"{url}/health", timeout=10).status_code)
            time.sleep(0.05)
    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda s: ask(client, image_message(s)), samples))
    stop.set()
    watcher.join()
    assert together == alone
    assert health and set(health) == {200}


def test_a_client_that_goes_away_frees_its_row(url):
    sample = generate("caption", "test", 4, 1, 112)[0]
    body = {"model": MODEL, "messages": image_message(sample), "stream": True, "max_tokens": 32,
            "remasking_strategy": "low_confidence_static"}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        next(response.iter_lines())  # the first chunk: the row is in the batch
    deadline = time.monotonic() + 20
    while httpx.get(f"{url}/health").json()["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    expected = {"status": "ok", "model": MODEL, "active": 0, "queued": 0, "auth": False}
    assert httpx.get(f"{url}/health").json() == expected


def test_a_full_queue_answers_503_and_a_late_request_408():
    config = ServerConfig(decoding=DecodingConfig(max_new_tokens=64, steps=8), max_batch=1, max_queue=1)
    with serving(build(config)) as base:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Describe the image."}]}
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: httpx.post(f"{base}/v1/chat/completions", json=body,
                                                         timeout=60).status_code, range(8)))
        assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}
    with serving(build(ServerConfig(request_timeout=1e-3))) as base:
        response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)
        assert response.status_code == 408 and error_of(response)["code"] == "timeout"


def test_local_image_paths_work_where_the_server_allows_them(tmp_path):
    sample = generate("count", "test", 5, 1, 112)[0]
    path = tmp_path / "shapes.png"
    sample.image.save(path)
    with serving(build(ServerConfig(allow_local_images=True))) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
        local = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": str(path)}}, {"type": "text", "text": sample.question}]}])
        assert local.choices[0].message.content == ask(client, image_message(sample))


def test_the_serve_command_starts_a_server_and_bad_flags_fail_before_loading(capsys):
    import subprocess
    import sys

    from diffusionvl.cli import main

    for flags, message in ((["--max-batch", "0"], "max_batch must be a positive integer"),
                           (["--threshold", "3"], "confidence_threshold must lie in [0, 1]"),
                           (["--model", "minivl-ar"], "diffusionvl convert")):
        with pytest.raises(SystemExit) as caught:
            main(["serve", *flags])
        assert caught.value.code == 2 and message in capsys.readouterr().err
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "diffusionvl.cli", "serve", "--port", str(port),
                               "--max-new-tokens", "8"], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "DIFFUSIONVL_API_KEY": "key-from-the-environment"})
    try:
        assert "serving diffusionvl model minivl-dvlm on http://127.0.0.1:" in server.stdout.readline()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="key-from-the-environment",
                               max_retries=0)
        messages = [{"role": "user", "content": "Describe the image."}]
        reply = client.chat.completions.create(model=MODEL, messages=messages)
        assert reply.usage.completion_tokens <= 8
        with pytest.raises(openai.AuthenticationError):
            client.with_options(api_key="none").chat.completions.create(model=MODEL, messages=messages)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_body_streamed_without_a_length_is_cut_off_at_the_limit(url):
    def body():
        for _ in range(ServerConfig().max_request_bytes // 2**20 + 2):
            yield b" " * 2**20
    response = httpx.post(f"{url}/v1/chat/completions", content=body())  # chunked: no Content-Length
    assert response.status_code == 413 and error_of(response)["code"] == "request_too_large"
    assert httpx.get(f"{url}/health").status_code == 200


def test_bad_requests_among_good_ones_change_none_of_the_good_answers(url, client):
    samples = generate("caption", "test", 8, 6, 112)
    alone = [ask(client, image_message(s)) for s in samples]
    broken = {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}]}

    def good(sample):
        return ask(client, image_message(sample))

    def bad(_):
        return httpx.post(f"{url}/v1/chat/completions", json=broken, timeout=60).status_code
    with ThreadPoolExecutor(12) as pool:
        answers = pool.map(good, samples)
        statuses = pool.map(bad, range(6))
        assert list(answers) == alone and set(statuses) == {400}


def test_a_request_the_engine_cannot_prepare_fails_alone():
    """Past the request checks, embedding a prompt can still fail (here: image patches that do not match the
    image's grid); that request gets its error, the one admitted with it is answered as if alone."""
    import torch

    from diffusionvl.inference import chat_inputs, load
    from diffusionvl.model import VisionInputs
    from diffusionvl.serving.scheduler import Job, Scheduler

    model, processor = load(MODEL)
    samples = generate("count", "test", 9, 2, 112)
    events = {0: [], 1: []}
    jobs = []
    for index, sample in enumerate(samples):
        inputs = chat_inputs(processor, [sample.question], [[sample.image]])
        pixels = inputs["pixel_values"][: 3 if index else None]  # the second job's patches are cut short
        jobs.append(Job(inputs["input_ids"], VisionInputs(pixels, inputs["image_grid_thw"]), DECODING,
                        lambda kind, payload, index=index: events[index].append((kind, payload))))
    scheduler = Scheduler(model, processor.tokenizer, max_batch=4, max_queue=4)
    for job in jobs:  # both wait before the loop starts: they are admitted in one round, embedded in one call
        scheduler.submit(job)
    scheduler.start()
    try:
        deadline = time.monotonic() + 30
        while not (events[0] and events[0][-1][0] == "done" and events[1]) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        scheduler.stop()
    assert events[1][0][0] == "error" and events[1][0][1].status == 400
    tokens = [token for kind, payload in events[0] if kind == "tokens" for token in payload]
    with torch.no_grad():
        alone = model.generate(**chat_inputs(processor, [samples[0].question], [[samples[0].image]]),
                               generation_config=DECODING)[0].tolist()
    assert tokens == [t for t in alone if t != model.special_tokens.pad]


def test_a_client_that_stops_waiting_for_a_plain_answer_frees_its_row(monkeypatch):
    """Without streaming, the server notices the disconnect while it waits and cancels the row. The engine is
    slowed down (0.2 s a block) so that the client gives up mid-answer."""
    from diffusionvl.serving import scheduler

    class Slow(scheduler.BlockDecoder):
        def step(self):
            time.sleep(0.2)
            return super().step()
    monkeypatch.setattr(scheduler, "BlockDecoder", Slow)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Describe the image."}], "max_tokens": 480,
            "remasking_strategy": "low_confidence_static"}  # no image: the model rambles on for 204 tokens
    with serving(build(ServerConfig())) as base:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/v1/chat/completions", json=body, timeout=httpx.Timeout(5, read=0.5))
        deadline = time.monotonic() + 20
        while httpx.get(f"{base}/health").json()["active"] and time.monotonic() < deadline:
            time.sleep(0.05)
        metrics = httpx.get(f"{base}/metrics").text
    assert time.monotonic() < deadline  # the row left long before its 26 blocks (5 s) would have ended
    generated = next(line for line in metrics.splitlines() if line.startswith("diffusionvl_generated_tokens_total"))
    assert 0 < float(generated.split()[1]) < 204


def test_image_urls_are_fetched_only_where_the_server_allows_them(tmp_path, client):
    """--allow-remote-images: the server fetches http(s) image URLs itself (here from a local file server)."""
    import functools
    import http.server

    sample = generate("count", "test", 10, 1, 112)[0]
    sample.image.save(tmp_path / "shapes.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    image_url = f"http://127.0.0.1:{files.server_address[1]}/shapes.png"
    remote = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                           {"type": "text", "text": sample.question}]}]
    try:
        with pytest.raises(openai.BadRequestError, match="allow-remote-images"):
            client.chat.completions.create(model=MODEL, messages=remote)  # the shared server does not allow it
        with serving(build(ServerConfig(decoding=DECODING, allow_remote_images=True))) as base:
            allowed = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
            assert ask(allowed, remote) == ask(client, image_message(sample))
    finally:
        files.shutdown()


def test_an_engine_failure_answers_500_and_the_server_goes_on(monkeypatch):
    from diffusionvl.serving import scheduler

    class Flaky(scheduler.BlockDecoder):
        failures = [RuntimeError("simulated kernel failure")]

        def step(self):
            if self.failures:
                raise self.failures.pop()
            return super().step()
    monkeypatch.setattr(scheduler, "BlockDecoder", Flaky)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Describe the image."}], "max_tokens": 8}
    with serving(build(ServerConfig())) as base:
        failed = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=30)
        assert failed.status_code == 500 and "simulated kernel failure" in error_of(failed)["message"]
        assert httpx.post(f"{base}/v1/chat/completions", json=body, timeout=30).status_code == 200
        assert httpx.get(f"{base}/health").json()["active"] == 0


def test_an_unexpected_failure_while_preparing_answers_in_openai_shape(monkeypatch):
    from diffusionvl.serving import app

    def broken(*args):
        raise KeyError("input_ids")
    monkeypatch.setattr(app, "conversation_inputs", broken)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    with serving(build(ServerConfig())) as base:
        response = httpx.post(f"{base}/v1/chat/completions", json=body)
        assert response.status_code == 500 and error_of(response)["type"] == "server_error"
        assert httpx.get(f"{base}/health").status_code == 200


def test_serve_decodes_speculatively_unless_a_strategy_is_named():
    import argparse

    from diffusionvl.serving.cli import add_arguments, server_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    plain = server_config(parser.parse_args([]))
    assert plain.speculative_default and plain.decoding.remasking_strategy == "low_confidence_static"  # for sampling
    named = server_config(parser.parse_args(["--strategy", "threshold"]))
    assert not named.speculative_default and named.decoding.remasking_strategy == "threshold"
    checked = server_config(parser.parse_args(["--verifier", "minivl-ar"]))  # sampled requests keep a policy
    assert checked.verifier == "minivl-ar" and checked.speculative_default
    assert checked.decoding.remasking_strategy == "low_confidence_static" and plain.verifier is None
