"""Trackers: each measures one thing and returns a small value type that says how it was obtained."""
