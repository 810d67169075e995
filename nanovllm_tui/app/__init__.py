"""The Textual app (chat, dashboard, bench screen) and the command line."""
