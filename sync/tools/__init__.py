"""Tools: snapshot, verify and status, run once by a user against a live pipeline."""
