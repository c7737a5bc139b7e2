"""Fakes of outside services the tests point real clients at (out of process, real protocols)."""
