"""`python -m nanovllm_tui ...` (same as `nanovllm-tui ...`)."""

from nanovllm_tui.app.cli import main

raise SystemExit(main())
