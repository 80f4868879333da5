"""Sync: state tokens, the changes interface, and the live event fan-out (RFC 8620 §5.2 shape)."""
