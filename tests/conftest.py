"""Shared fixtures. Tests that need torch import it themselves and are skipped without it."""
