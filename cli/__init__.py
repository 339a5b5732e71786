"""The `longrun` command: the one place that composes api/, worker/ and shared/."""
