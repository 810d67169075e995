"""The session settings modal: system prompt and sampling (temperature, top_p, top_k, min_p, penalties, max_tokens,
seed) and, for a model whose chat template has the switch, thinking."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Static, TextArea

from nanovllm_tui.app.session import SessionSettings


class SettingsScreen(ModalScreen[SessionSettings | None]):
    """Edit one session's settings; returns the new settings, or None when cancelled."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "save", "Save")]

    def __init__(self, title: str, settings: SessionSettings, thinking_switch: bool = True):
        """thinking_switch: the model's chat template has Qwen3's enable_thinking (else the toggle is hidden)."""
        super().__init__()
        self.title_text = title
        self.settings = settings
        self.thinking_switch = thinking_switch

    def compose(self) -> ComposeResult:
        s = self.settings
        with Vertical(id="settings-dialog") as dialog:
            dialog.border_title = f"{self.title_text} settings"
            yield Label("System prompt")
            yield TextArea(s.system_prompt, id="system-prompt", soft_wrap=True, show_line_numbers=False, compact=True)
            with Grid(id="settings-grid"):
                yield Label("temperature")
                yield Input(f"{s.temperature:g}", id="temperature", compact=True)
                yield Label("top_p")
                yield Input(f"{s.top_p:g}", id="top_p", compact=True)
                yield Label("top_k (-1 off)")
                yield Input(str(s.top_k), id="top_k", compact=True)
                yield Label("min_p (0 off)")
                yield Input(f"{s.min_p:g}", id="min_p", compact=True)
                yield Label("repetition_penalty (1 off)")
                yield Input(f"{s.repetition_penalty:g}", id="repetition_penalty", compact=True)
                yield Label("presence_penalty (0 off)")
                yield Input(f"{s.presence_penalty:g}", id="presence_penalty", compact=True)
                yield Label("frequency_penalty (0 off)")
                yield Input(f"{s.frequency_penalty:g}", id="frequency_penalty", compact=True)
                yield Label("max_tokens")
                yield Input(str(s.max_tokens), id="max_tokens", compact=True)
                yield Label("seed (blank: none)")
                yield Input("" if s.seed is None else str(s.seed), id="seed", compact=True)
                if self.thinking_switch:
                    yield Label("thinking (Qwen3)")
                    yield Checkbox("on", s.thinking, id="thinking", compact=True)
            yield Static(id="settings-error")
            with Horizontal(id="settings-buttons"):
                yield Button("Save (ctrl+s)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")

    def _read(self) -> SessionSettings:
        """The form as SessionSettings; ValueError names the bad field."""

        def number(field: str, kind: type):
            raw = self.query_one(f"#{field}", Input).value.strip()
            try:
                return kind(raw)
            except ValueError:
                raise ValueError(f"{field}={raw!r} is not a valid {kind.__name__}") from None

        seed_raw = self.query_one("#seed", Input).value.strip()
        settings = SessionSettings(
            system_prompt=self.query_one("#system-prompt", TextArea).text,
            temperature=number("temperature", float),
            top_p=number("top_p", float),
            top_k=number("top_k", int),
            min_p=number("min_p", float),
            repetition_penalty=number("repetition_penalty", float),
            presence_penalty=number("presence_penalty", float),
            frequency_penalty=number("frequency_penalty", float),
            max_tokens=number("max_tokens", int),
            seed=number("seed", int) if seed_raw else None,
            thinking=self.query_one("#thinking", Checkbox).value if self.thinking_switch else self.settings.thinking,
        )
        settings.sampling_params()  # validates ranges with the engine's own messages
        return settings

    def action_save(self) -> None:
        try:
            settings = self._read()
        except ValueError as exc:
            self.query_one("#settings-error", Static).update(Text(str(exc), style="bold red"))
            return
        self.dismiss(settings)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_save() if event.button.id == "save" else self.action_cancel()

    def on_input_submitted(self) -> None:
        self.action_save()
