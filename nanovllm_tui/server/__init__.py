"""`nanovllm-tui serve`: the engine behind OpenAI's HTTP API, with vLLM's Prometheus metrics and a watch view.

api (the FastAPI app), schemas (request bodies), chat / completions (the handlers), generate (submitting to the
engine), stream (a request's outputs on the event loop, SSE), errors (OpenAI's error body), metrics (Prometheus),
tracker (requests in flight and recent), state (what handlers share), background (uvicorn on a thread),
cli (the command), watch (the Textual view). Importing this package imports nothing heavy.
"""
