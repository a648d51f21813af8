"""Limits per API key: reservations in metering before a request runs, settled to its exact usage."""
