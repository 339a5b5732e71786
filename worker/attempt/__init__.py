"""One attempt at one run: `AttemptState` plus the functions that drive it (`execute`)."""

from worker.attempt.drive import LIFECYCLE_TYPES, execute
from worker.attempt.state import AttemptState, Deps

__all__ = ["LIFECYCLE_TYPES", "AttemptState", "Deps", "execute"]
