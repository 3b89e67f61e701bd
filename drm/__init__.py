"""Legato drm package (see ARCHITECTURE.md)."""
