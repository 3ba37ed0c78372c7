"""``python -m service.cli``: what ``trainlab`` runs (``trainlab up`` starts its worker so)."""

from service.cli import app

app()
