"""The truth as the relay holds it: stability, details, history, waits, ETA."""
