"""Command-line entry points (thin wrappers; the work is done in the library)."""
