"""Widgets of the app: chat panes and the dashboard."""
