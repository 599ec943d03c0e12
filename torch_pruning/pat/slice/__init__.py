"""slice."""
