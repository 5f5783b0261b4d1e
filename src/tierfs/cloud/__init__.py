"""Tier 3: the cloud providers behind one contract (`base.CloudStore`)."""
