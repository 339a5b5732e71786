"""The HTTP API: a thin FastAPI app over the shared store and Redis key schema."""
