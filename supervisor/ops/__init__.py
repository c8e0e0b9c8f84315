"""supervisor.ops."""
