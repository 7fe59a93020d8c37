"""`diffusionvl bench-serve` end to end at toy size: the shipped MiniVL model served in-process, real HTTP, the
official openai client. Speed is what the command measures, so nothing here asserts on it; what must hold at
any speed is the shape of the result and that batching never changes a greedy answer."""

import argparse
import json

import pytest

from diffusionvl.serving import load

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_serve_small(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    load.add_arguments(parser)
    path = tmp_path / "serve.json"
    load.main(parser.parse_args(["--clients", "1", "4", "--requests", "8", "--max-tokens", "16",
                                 "--json", str(path)]))
    table = capsys.readouterr().out
    assert "| clients | requests/s | tokens/s |" in table and "| serial |" in table

    result = json.loads(path.read_text())
    assert [row["clients"] for row in result["rows"]] == ["serial", 1, 4]
    assert result["max_clients"] == 4
    assert result["max_clients_vs_serial_tokens_per_s"] == result["rows"][-1]["vs_serial_tokens_per_s"] > 0
    settings = result["settings"]
    assert settings["model"] == "minivl-dvlm" and settings["device"] == "cpu" and settings["torch_threads"] == 1
    assert settings["max_tokens"] == 16 and settings["requests"] == 8 and settings["timestamp"]
    for row in result["rows"]:
        assert row["requests"] == 8 and row["mismatches"] == 0, row
        assert row["tokens_per_s"] > 0 and row["requests_per_s"] > 0 and row["completion_tokens"] > 0
        assert row["latency_p95_ms"] >= row["latency_p50_ms"] > 0
        assert row["mean_nfe"] >= 1 and row["tokens_per_forward"] > 0


def test_workload_mixes_tasks_with_images():
    requests = load.workload(6)
    assert len(requests) == 6
    questions = [r[0]["content"][1]["text"] for r in requests]
    assert questions[0] == "Describe the image." and questions[2] == "Read the number."
    assert all(r[0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,") for r in requests)


def test_bench_serve_against_a_running_server():
    """--url: the benchmark only talks HTTP, and names the model the server reports."""
    from diffusionvl.serving.cli import build
    from diffusionvl.serving.config import ServerConfig
    from diffusionvl.serving.local import serving

    with serving(build(ServerConfig(served_name="mini", max_batch=2), "cpu")) as url:
        result = load.run(url=url + "/", clients=[2], requests=4, max_tokens=8)
    assert result["settings"]["model"] == "mini" and result["settings"]["device"] is None
    assert [row["clients"] for row in result["rows"]] == ["serial", 2]
    assert all(row["mismatches"] == 0 and row["tokens_per_s"] > 0 for row in result["rows"])
