"""Tests for runtime/backends/."""
