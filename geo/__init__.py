"""Legato geo package (see ARCHITECTURE.md)."""
