"""Saved chats: a SQLite history (store, schema), its writer thread, the app-side recorder, and exports."""
