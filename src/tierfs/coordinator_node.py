"""`tierfs coordinator`: membership, file locations and cluster statistics."""

from __future__ import annotations

from tierfs.errors import TierfsError
from tierfs.settings import CoordinatorSettings


async def run_coordinator(settings: CoordinatorSettings) -> None:
    """The coordinator service is not part of this build yet: say so plainly."""
    raise TierfsError(f"this build has no coordinator service yet (asked for port {settings.port})")
