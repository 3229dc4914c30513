"""Transports: where a session's audio comes from and where it goes."""
