"""Legato bench package (see ARCHITECTURE.md)."""
