"""PostgreSQL → truth: the listener, its hold, the activities, the plumbing."""
