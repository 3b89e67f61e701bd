"""Legato cache package (see ARCHITECTURE.md)."""
