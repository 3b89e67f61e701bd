"""Legato edge package (see ARCHITECTURE.md)."""
