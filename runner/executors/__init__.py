"""runner.executors."""
