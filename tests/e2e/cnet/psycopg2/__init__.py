"""Stands in for a C-networking driver in tests."""
