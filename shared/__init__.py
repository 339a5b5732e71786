"""Code used by both the API and the workers: config, Redis key schema, models, store, agents."""
