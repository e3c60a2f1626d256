"""Offline data worlds with small models the project trains itself (no weights are ever downloaded)."""
