"""Several front ends under one lean, standard-library-only arbiter process, and its reloads."""
