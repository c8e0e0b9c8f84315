"""supervisor.project.project."""
