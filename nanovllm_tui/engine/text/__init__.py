"""Text: tokenizer, incremental detokenizer, chat templates, reasoning split and prompt checks."""
