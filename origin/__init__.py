"""Legato origin package (see ARCHITECTURE.md)."""
