"""Tier 2: the peer API every node serves, and the client that reads from other nodes."""
