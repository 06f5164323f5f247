"""Test fixtures that ship with the package: generated conversations, the bad-input corpus."""
