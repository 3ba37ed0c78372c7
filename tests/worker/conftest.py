"""Worker tests run on the service tests' migrated databases (SQLite and PostgreSQL)."""

from tests.service.conftest import db_url, engine, pg_url, session, sqlite_template

__all__ = ["db_url", "engine", "pg_url", "session", "sqlite_template"]
