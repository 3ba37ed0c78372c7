"""The training engine: pure PyTorch.

Importable and testable without Celery, a database or FastAPI (a test checks it).
``worker.engine.loop.train(spec, on_event=...)`` is the entry point.
"""
