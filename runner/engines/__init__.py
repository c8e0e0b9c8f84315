"""runner.engines."""
