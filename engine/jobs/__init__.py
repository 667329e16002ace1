"""Drivers: sweeps (in-process or on Ray), search, sensitivity, the measuring worker, command jobs."""
