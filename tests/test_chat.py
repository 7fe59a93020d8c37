"""`diffusionvl chat`: a bad turn or Ctrl-C ends that turn only; a length limit the model cannot hold is refused
at start (probe rows N59-N61)."""

import pytest
from conftest import cli_error

from diffusionvl import cli


def chat(monkeypatch, tmp_path, lines, *argv) -> None:
    """Run `diffusionvl chat` on these input lines (an exception in the list is raised by input(), as Ctrl-C
    would); the end of the list is Ctrl-D."""
    feed = iter(lines)

    def typed(prompt=""):
        line = next(feed, EOFError())
        if isinstance(line, BaseException):
            raise line
        return line
    monkeypatch.setattr("builtins.input", typed)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the readline history goes there
    cli.main(["chat", "--max-new-tokens", "8", *argv])


def test_a_message_too_long_for_the_model_fails_alone_and_the_chat_goes_on(monkeypatch, tmp_path, capsys):
    chat(monkeypatch, tmp_path, ["w " * 50_000, "Describe the image."])
    out, err = capsys.readouterr()
    assert "error: prompt 0 has" in err and "shorten the prompt" in err
    assert err.count("tokens/forward") == 1 and out.count("model> ") == 2  # the second message was answered


def test_ctrl_c_during_an_answer_stops_it_and_the_chat_goes_on(monkeypatch, tmp_path, capsys):
    from diffusionvl import inference

    real, calls = inference.answer, []

    def interrupted_once(*args, **kwargs):
        calls.append(args[2]["input_ids"].shape[1])
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(inference, "answer", interrupted_once)
    chat(monkeypatch, tmp_path, ["Describe the image.", "Describe the image."])
    err = capsys.readouterr().err
    assert "answer stopped" in err and err.count("tokens/forward") == 1
    assert calls[0] == calls[1]  # the stopped turn was forgotten: the second prompt is not a two-turn one


def test_ctrl_c_at_the_prompt_leaves(monkeypatch, tmp_path, capsys):
    chat(monkeypatch, tmp_path, [KeyboardInterrupt()])  # returns instead of raising
    assert "tokens/forward" not in capsys.readouterr().err


def test_max_new_tokens_beyond_the_models_positions_is_refused_at_start(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("builtins.input", lambda prompt="": pytest.fail("asked for a message"))
    message = cli_error(capsys, "chat", "--max-new-tokens", "1024")
    assert "--max-new-tokens 1024 leaves no room for a message" in message and "at most" in message
