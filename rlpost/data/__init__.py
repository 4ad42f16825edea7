"""Prompt datasets: loading rows, chat-templating them into token ids, and serving seeded batches."""

from rlpost.data.prompts import Prompt, PromptLoader, build_prompts, load_rows, resolve_data_path

__all__ = ["Prompt", "PromptLoader", "build_prompts", "load_rows", "resolve_data_path"]
