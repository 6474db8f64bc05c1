"""MLflow: the store, the recorded run, the table of runs, liveness and the outbox."""
