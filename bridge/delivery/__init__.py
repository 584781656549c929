"""The hot path from a matched event to an outcome: pipeline, jobs, retries, limits, dead
letters."""
