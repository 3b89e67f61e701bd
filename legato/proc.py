"""Process facts shared by the packager's staging sweep and the cache's locks."""

from __future__ import annotations

import os


def pid_alive(pid: object) -> bool:
    """Whether ``pid`` names a live process (signal 0 probe; another user's counts as alive)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
