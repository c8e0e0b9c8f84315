"""supervisor.pool.pool."""
