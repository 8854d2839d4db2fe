"""The SQL: connecting to the catalog (DuckDB or PostgreSQL), its schema, dialect helpers."""
