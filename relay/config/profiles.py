"""Profiles: ready-made activity sets for known systems, kept as YAML in
``relay/config/profiles/``.

A profile is what a user would write under ``activities:``, so each one is also a worked
example. ``seed`` (the planning document's schema) is the default.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

import yaml
from pydantic import ValidationError

from relay.config.activities import Activity
from relay.config.fields import Section

DEFAULT_PROFILE = "seed"
CUSTOM = "custom"  # no profile: the config's own activities


class Profile(Section):
    description: str
    activities: tuple[Activity, ...]
    # Feeds the profile serves (relay/config/feeds.py validates them): used unless the
    # config lists its own under feeds:.
    feeds: tuple[dict[str, Any], ...] = ()


def available() -> list[str]:
    folder = importlib.resources.files("relay.config") / "profiles"
    names = (p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))
    return sorted(names)


def load_profile(name: str) -> Profile:
    """The named profile; ``KeyError`` naming the available ones when there is none."""
    if name not in available():
        raise KeyError(f'unknown profile "{name}" (available: {", ".join(available())}, custom)')
    text = (importlib.resources.files("relay.config") / "profiles" / f"{name}.yaml").read_text(
        "utf-8"
    )
    tree: Any = yaml.safe_load(text)
    try:
        return Profile.model_validate(tree)
    except ValidationError as error:  # a packaging bug, but say where
        raise KeyError(f'profile "{name}" is invalid: {error}') from None
