"""`python -m nanovllm_tui.bench ...` (same as `nanovllm-tui bench ...`)."""

import sys

from nanovllm_tui.bench.cli import main

sys.exit(main())
