"""Programmatic Alembic: ``upgrade_database(url)`` is what ``trainlab migrate`` runs."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

logger = logging.getLogger(__name__)

# service/db/migrate.py -> repository root; works from a checkout or an editable install.
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str) -> Config:
    ini = MIGRATIONS_DIR / "alembic.ini"
    if not ini.is_file():
        raise FileNotFoundError(f"Alembic environment not found at {MIGRATIONS_DIR}")
    config = Config(str(ini))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = url
    # The calling program owns logging; the ini's logging section is for the alembic CLI.
    config.attributes["configure_logging"] = False
    return config


def upgrade_database(url: str, revision: str = "head") -> None:
    logger.info("upgrading database schema to %s", revision)
    command.upgrade(alembic_config(url), revision)


def downgrade_database(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)
