"""The worker: a Redis consumer-group member that executes runs."""
