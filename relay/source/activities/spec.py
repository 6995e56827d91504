"""Moved to ``relay/config/activities.py`` (the activity model is configuration). Kept only for
bench/'s imports until they name the new module; nothing in relay/ or tests/ imports this."""

from relay.config.activities import Activity

__all__ = ["Activity"]
