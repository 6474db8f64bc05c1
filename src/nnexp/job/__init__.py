"""A job's lifecycle: compose, build, train, checkpoint, resume, sweep; ``run.run`` is the entry point."""
