"""Runner processes: spawning, leasing, backoff, recycling, CPU priority, the compile step and
the generations a reload switches between."""
