"""Data pipeline: row schema, loading, image resize cache, prompts, curriculum, SFT export, Hub download."""
