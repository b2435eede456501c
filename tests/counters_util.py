"""The agent's delivery counters in tests."""

from __future__ import annotations

# Where a logged record can be: these add up to ``logged`` at every moment.
PLACES = (
    "pending",
    "shipped",
    "spooled",
    "discarded",
    "sampled_out",
    "dropped_full",
    "dropped_spool",
    "invalid",
)


def settled(stats: dict[str, int]) -> int:
    """The records ``stats`` accounts for (``logged`` when they add up)."""
    return sum(stats[k] for k in PLACES)
