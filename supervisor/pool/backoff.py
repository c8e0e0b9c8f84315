"""The restart policy for children that fail on their own: runners in a
pool (``supervisor/pool/members.py``) and the arbiter's front ends and admin
listener. Standard library only, so the lean arbiter can import it.
"""

from __future__ import annotations

_MAX_BACKOFF_S = 10.0
# While no other child of the kind is alive, a slot never waits longer than this.
_MAX_BACKOFF_ALONE_S = 0.5
_FIRST_BACKOFF_S = 0.05
# A child that dies on its own sooner than this after its start counts as
# another failure in a row; later, the count starts again.
STABLE_AFTER_S = 10.0
# Boot failures in a row, in every slot, before a server that never had a
# front end ready gives up.
HALT_AFTER_BOOT_FAILURES = 3


def backoff_delay(failures: int, others_alive: bool) -> float:
    """Seconds a slot waits before its next start after ``failures`` in a row."""
    if failures <= 0:
        return 0.0
    ceiling = _MAX_BACKOFF_S if others_alive else _MAX_BACKOFF_ALONE_S
    return min(ceiling, _FIRST_BACKOFF_S * 2.0 ** (failures - 1))
