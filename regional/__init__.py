"""Legato regional package (see ARCHITECTURE.md)."""
