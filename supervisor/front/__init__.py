"""supervisor.front."""
