"""Small simulated tasks built in the project (no simulator download)."""
