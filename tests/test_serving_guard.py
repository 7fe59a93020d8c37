"""The server under hostile or broken conditions: out-of-range seeds, a decoder that raises, a dead engine
thread, huge or malformed text, clients that leave mid-body or stall, and the API key."""

import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from test_serving import MODEL, ask, error_of

from diffusionvl.serving.cli import build
from diffusionvl.serving.config import ServerConfig
from diffusionvl.serving.local import serving

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("seed", [2**64, -1])
def test_a_seed_outside_the_generator_range_is_a_400_and_the_server_goes_on(url, seed):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Describe the image."}], "max_tokens": 4,
            "temperature": 1.0, "seed": seed}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400 and error_of(response)["param"] == "seed"
    body["seed"] = 7
    assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30).status_code == 200
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_a_request_whose_decode_raises_fails_alone_and_a_dead_engine_shows_in_health(monkeypatch):
    """A decoder of other settings (steps=3) fails at its first block; a concurrent request is answered as if
    alone, and so is the next one. Then the engine thread is stopped: /health says 503."""
    from diffusionvl.serving import scheduler

    class Failing(scheduler.BlockDecoder):
        def step(self):
            if self.config.steps == 3:
                raise RuntimeError("simulated failure of one decoder")
            return super().step()
    monkeypatch.setattr(scheduler, "BlockDecoder", Failing)
    good = {"model": MODEL, "messages": [{"role": "user", "content": "Describe the image."}], "max_tokens": 8}
    bad = {**good, "steps": 3}
    app = build(ServerConfig())
    with serving(app) as base:
        alone = httpx.post(f"{base}/v1/chat/completions", json=good, timeout=60).json()
        with ThreadPoolExecutor(2) as pool:
            failed, answered = pool.map(lambda body: httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60),
                                        [bad, good])
        assert failed.status_code == 500 and "simulated failure" in error_of(failed)["message"]
        assert answered.status_code == 200
        assert answered.json()["choices"][0]["message"] == alone["choices"][0]["message"]
        assert httpx.post(f"{base}/v1/chat/completions", json=good, timeout=60).status_code == 200
        assert httpx.get(f"{base}/health").status_code == 200
        app.state.scheduler.stop()  # the engine thread ends, as if killed
        health = httpx.get(f"{base}/health")
        assert health.status_code == 503 and health.json()["status"] == "engine stopped"


def test_a_40_mb_text_body_is_refused_before_it_is_tokenized_while_others_are_answered(url, client):
    """Over the characters the token limit can hold: refused by a character count, not after tokenizing 40 MB."""
    text = "w " * 20_000_000
    body = '{"model": "%s", "max_tokens": 4, "messages": [{"role": "user", "content": "%s"}]}' % (MODEL, text)
    with ThreadPoolExecutor(2) as pool:
        big = pool.submit(httpx.post, f"{url}/v1/chat/completions", content=body,
                          headers={"content-type": "application/json"}, timeout=120)
        small = pool.submit(ask, client, [{"role": "user", "content": "Describe the image."}], max_tokens=4)
        assert small.result()
        refused = big.result()
    assert refused.status_code == 400 and "characters, more than this server's" in error_of(refused)["message"]
    assert error_of(refused)["code"] == "context_length_exceeded"


def test_a_lone_surrogate_in_the_text_is_a_400_naming_where(url):
    body = '{"model": "%s", "messages": [{"role": "user", "content": "red \\ud800 circle"}]}' % MODEL
    response = httpx.post(f"{url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and error_of(response)["param"] == "messages[0].content[0]"
    assert "surrogate" in error_of(response)["message"]


def test_an_api_key_guards_the_api_and_metrics_but_not_health():
    messages = [{"role": "user", "content": "Describe the image."}]
    with serving(build(ServerConfig(api_key="s3cret"))) as base:
        keyed = openai.OpenAI(base_url=f"{base}/v1", api_key="s3cret", max_retries=0)
        assert keyed.chat.completions.create(model=MODEL, messages=messages, max_tokens=4).choices[0].message.content
        assert [model.id for model in keyed.models.list()] == [MODEL]
        with pytest.raises(openai.AuthenticationError) as caught:
            keyed.with_options(api_key="wrong").chat.completions.create(model=MODEL, messages=messages)
        assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"
        unkeyed = httpx.post(f"{base}/v1/chat/completions", json={"model": MODEL, "messages": messages})
        assert unkeyed.status_code == 401 and error_of(unkeyed)["code"] == "invalid_api_key"
        assert httpx.get(f"{base}/v1/models").status_code == 401
        assert httpx.get(f"{base}/health").json()["auth"] is True
        assert httpx.get(f"{base}/metrics").status_code == 401
        assert httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    with serving(build(ServerConfig(api_key="s3cret", metrics_without_key=True))) as base:
        assert httpx.get(f"{base}/metrics").status_code == 200 and httpx.get(f"{base}/v1/models").status_code == 401


def test_serve_warns_when_it_listens_beyond_this_machine_without_a_key(monkeypatch, capsys):
    import uvicorn

    from diffusionvl.cli import main
    from diffusionvl.serving import cli as serving_cli

    monkeypatch.setattr(serving_cli, "build", lambda *args: type("App", (), {"title": "diffusionvl"})())
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    for host, key, warned in (("0.0.0.0", None, True), ("192.0.2.7", None, True), ("0.0.0.0", "k", False),
                              ("127.0.0.1", None, False), ("::1", None, False), ("localhost", None, False)):
        monkeypatch.delenv("DIFFUSIONVL_API_KEY", raising=False)
        main(["serve", "--host", host] + (["--api-key", key] if key else []))
        err = capsys.readouterr().err
        assert ("without an API key" in err) == warned, (host, key, err)


def test_a_client_that_leaves_mid_body_is_no_error_and_a_stalled_body_is_closed(caplog):
    """A client closing its connection halfway through the body: counted as 499 (client closed), no 500 and no
    traceback. A body that stalls is answered 408 and its connection closed after body_timeout."""

    caplog.set_level(logging.WARNING)
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{\"model\": \"minivl-dvlm\", ")
    with serving(build(ServerConfig(body_timeout=1.0))) as base:
        address = base.removeprefix("http://").split(":")
        with socket.create_connection((address[0], int(address[1]))) as gone:
            gone.sendall(head)
            time.sleep(0.3)
        with socket.create_connection((address[0], int(address[1])), timeout=20) as stalled:
            stalled.sendall(head)
            answer = b""
            while chunk := stalled.recv(65536):  # until the server closes the connection
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408") and b"body_timeout" in answer
        time.sleep(0.3)
        metrics = httpx.get(f"{base}/metrics").text
    assert 'diffusionvl_requests_total{status="499"} 1.0' in metrics and 'status="500"' not in metrics
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
