"""ChatTabs: the chats as tabs (a TabbedContent): switching by offset or number, the active tab kept in view however
many chats are open, and a mark on each tab whose answer is being generated."""

from __future__ import annotations

from rich.text import Text
from textual.css.query import NoMatches
from textual.widgets import TabbedContent, TabPane, Tabs

from nanovllm_tui.app.widgets.chat import ChatPane

STREAMING = "● "  # prefixed to a tab's label while its answer streams (seen from any other tab)


class ChatTabs(TabbedContent):
    """The chat panes in tab order; the app owns what is in them."""

    async def add_chat(self, pane: ChatPane) -> None:
        """Add the chat's tab after the others and make it the active one."""
        pane_id = f"session-{pane.session.number}"
        await self.add_pane(TabPane(pane.session.title, pane, id=pane_id))
        self.active = pane_id

    def active_chat(self) -> ChatPane | None:
        """The active tab's chat (None while none is active, or a tab is being added or removed)."""
        try:
            pane = self.active_pane
            return pane.query_one(ChatPane) if pane is not None else None
        except NoMatches:
            return None

    def pane_ids(self) -> list[str]:
        """The panes' ids, in tab order."""
        return [pane.id for pane in self.query(TabPane) if pane.id]

    def switch_by(self, offset: int) -> bool:
        """Activate the tab `offset` places from the active one, wrapping around; False if none is active."""
        ids = self.pane_ids()
        if self.active not in ids:
            return False
        self.active = ids[(ids.index(self.active) + offset) % len(ids)]
        return True

    def switch_to(self, index: int) -> bool:
        """Activate the index-th tab (1-based); False if there is none."""
        ids = self.pane_ids()
        if not 1 <= index <= len(ids):
            return False
        self.active = ids[index - 1]
        return True

    def show_streaming(self, streaming: dict[str, bool]) -> None:
        """Mark the tabs whose answer is being generated (by pane id), unmark the others, keep the active one in
        view (the marks change the labels' widths). Called on the app's timer; the history's titles stay."""
        for pane_id, on in streaming.items():
            try:
                tab = self.get_tab(pane_id)
            except NoMatches:  # the tab is being added or removed right now
                continue
            label = tab.label_text
            if on != label.startswith(STREAMING):
                tab.label = Text(STREAMING + label if on else label.removeprefix(STREAMING))
        self.keep_active_in_view()

    def keep_active_in_view(self) -> None:
        """Scroll the tab row to the active tab if it is out of view (on activation, and on the app's timer)."""
        try:
            tab, row = self.get_tab(self.active), self.query_one(Tabs).region
        except NoMatches:  # no active tab, or it is being added or removed right now
            return
        if row.width and not (row.x <= tab.region.x and tab.region.right <= row.right):
            # Tabs scrolls to a tab on activation, animated; switching chats makes it activate the old tab and
            # the new one again in a burst (focus moving between the panes), and the scroll meant for the old
            # one could land last: with many tabs, wrapping from the last to the first left the first hidden.
            # force: the tab row has overflow hidden.
            self.call_after_refresh(tab.scroll_visible, animate=False, force=True)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self.keep_active_in_view()  # the event goes on to the app
