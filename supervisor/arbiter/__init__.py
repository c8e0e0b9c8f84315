"""supervisor.arbiter.arbiter."""
