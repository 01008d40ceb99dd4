"""Whether a bundle, as RAUC describes it once it has checked the signature, may be written
to the other slot: this box's compatible, the version offered, not the one running, and
newer than the floor unless the downgrade action permitted exactly this version."""

from __future__ import annotations

from pits_appliance.rauc import BundleInfo
from pits_appliance.update_floor import Floor


def bundle_refusal(
    info: BundleInfo,
    *,
    compatible: str,
    offered: str | None,
    running: str,
    floor: Floor | None,
    downgrade: str | None,
) -> str | None:
    """Why RAUC must not install this bundle (the report's message); None when it may."""
    if info.compatible != compatible:
        return f"The bundle is for {info.compatible}; this box is {compatible}."
    if offered is not None and info.version != offered:
        return f"The bundle holds version {info.version}, not the {offered} offered."
    if info.version == running:
        return f"Version {info.version} is already running."
    if downgrade is not None:
        if info.version != downgrade:
            return f"The bundle holds version {info.version}, not the {downgrade} chosen."
        return None
    return floor.refuses(info.version) if floor is not None else None
