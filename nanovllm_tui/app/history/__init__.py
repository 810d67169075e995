"""Saved chats: a SQLite history (store, schema, app-wide preferences), its writer thread, the app-side recorder,
and exports."""
