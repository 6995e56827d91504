"""The `stability-relay` command: run, check, db install, webhook, wait."""

from relay.cli.main import main

__all__ = ["main"]
