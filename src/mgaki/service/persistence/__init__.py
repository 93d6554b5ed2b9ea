"""The service database (``db``: alerts, audit, JWT ids; SQLite or PostgreSQL, Alembic ``migrations``)
and the file locks that serialise writers across worker processes (``locks``)."""
