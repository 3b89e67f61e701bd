"""Legato's shared plumbing: the `legato` command, the config loader, HTTP
semantics shared by every tier, logging and the server runner.  The
architecture lives in the sibling packages (see ARCHITECTURE.md)."""

__version__ = "0.1.0"
