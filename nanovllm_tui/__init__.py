"""nanovllm-tui: the Textual app and command line over the engine (imports nothing heavy at package import)."""
__version__ = "0.1.0"
