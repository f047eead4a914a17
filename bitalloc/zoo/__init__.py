"""Demo models and the built-in corpus (SmolLM2, MiniLM, digits CNN; pydoc text). Only the CLI and tests import this."""
