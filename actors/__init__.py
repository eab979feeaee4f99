"""Ray actors and their plumbing: client workers, the worker pool, cluster start-up."""
