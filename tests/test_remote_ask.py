"""Attach mode's model choice when the server lists several and no --model is given: on a terminal, ask_model
lists them numbered and reads a number or a name (asking again after a bad answer); end of input or Ctrl+C is
one line and exit status 2. Fake input and output streams here; the real command in a pty is in
tests/test_remote_cli_app.py."""

from __future__ import annotations

import io

import pytest
from remote_servers import ScriptedServer

from nanovllm_tui.remote.cli import ask_model
from nanovllm_tui.remote.client import ModelCard
from nanovllm_tui.remote.service import RemoteService, choose_model

URL = "http://127.0.0.1:8000"
MODELS = [ModelCard("a/one", 4096), ModelCard("b/two", 8192), ModelCard("c/\x1b[2Jthree")]


def ask(answers: str) -> tuple[ModelCard, str]:
    """What ask_model picks for typed `answers`, and everything it wrote."""
    out = io.StringIO()
    return ask_model(MODELS, URL, io.StringIO(answers), out), out.getvalue()


def test_a_number_or_a_name_picks_the_model():
    picked, shown = ask("2\n")
    assert picked == MODELS[1]
    assert shown == (
        f"{URL} serves 3 models:\n  1. a/one\n  2. b/two\n  3. c/␛[2Jthree\nmodel to chat with (1-3): "
    )  # a server's escape sequences are shown, not obeyed
    assert ask("  a/one \n")[0] == MODELS[0]


def test_a_bad_answer_asks_again():
    picked, shown = ask("0\n4\nnope\n\n3\n")
    assert picked == MODELS[2]
    assert shown.count("model to chat with (1-3): ") == 5
    assert "'4' is not one of them; type a number from 1 to 3 or a name\n" in shown
    assert "'nope' is not one of them" in shown and "'' is not one of them" in shown


@pytest.mark.parametrize("answers", ["", "9\n"])
def test_end_of_input_is_one_line(answers):
    with pytest.raises(ValueError) as e:
        ask(answers)
    assert str(e.value) == "input ended: no model picked; pass --model NAME (a/one, b/two, c/␛[2Jthree)"


def test_ctrl_c_is_one_line():
    class Interrupted(io.StringIO):
        def readline(self, size: int | None = -1) -> str:
            raise KeyboardInterrupt

    out = io.StringIO()
    with pytest.raises(ValueError, match=r"^interrupted: no model picked; pass --model NAME \(a/one, ") as e:
        ask_model(MODELS, URL, Interrupted(), out)
    assert "\n" not in str(e.value) and out.getvalue().endswith(": \n")  # the prompt line is ended


def test_choose_model_asks_only_when_it_must():
    asked: list[list[ModelCard]] = []

    def pick_last(models: list[ModelCard]) -> ModelCard:
        asked.append(models)
        return models[-1]

    assert choose_model(MODELS, None, URL, pick_last) == MODELS[2] and asked == [MODELS]
    assert choose_model(MODELS, "a/one", URL, pick_last) == MODELS[0]  # --model given: no question
    assert choose_model(MODELS[:1], None, URL, pick_last) == MODELS[0]  # the only one: no question
    with pytest.raises(ValueError, match="does not serve model 'z'"):
        choose_model(MODELS, "z", URL, pick_last)
    with pytest.raises(ValueError, match="lists no model"):
        choose_model([], None, URL, pick_last)
    assert len(asked) == 1
    with pytest.raises(ValueError, match=r"serves 3 models; pick one with --model NAME"):
        choose_model(MODELS, None, URL)  # no way to ask (--check, no terminal)


def test_connect_passes_the_question_down():
    with ScriptedServer(models=("a/one", "b/two")) as server:
        service = RemoteService.connect(server.url, interval=60.0, ask=lambda models: models[1])
        try:
            assert service.info().model == "b/two" and service.info().models == ("a/one", "b/two")
        finally:
            service.shutdown(timeout=2)
