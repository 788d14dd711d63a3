"""The model zoo: tiny random models with real tokenizers and chat templates, one per model family."""
