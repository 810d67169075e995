"""Attach mode: talk to any vLLM-compatible server over HTTP (OpenAI API for chat, /metrics for the dashboard).

Nothing here imports torch; every network call has a timeout and runs off the UI thread.
"""
