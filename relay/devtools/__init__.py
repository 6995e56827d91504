"""Development tools (demo, embedded PostgreSQL, workload); never imported by the daemon."""
