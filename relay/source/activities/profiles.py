"""Moved to ``relay/config/profiles.py`` (the profiles are configuration). Kept only for
bench/'s imports until they name the new module; nothing in relay/ or tests/ imports this."""

from relay.config.profiles import load_profile

__all__ = ["load_profile"]
