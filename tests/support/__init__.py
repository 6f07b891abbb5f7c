"""Helpers shared by several test layers (no tests here)."""
