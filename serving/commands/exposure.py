"""What `seqserve serve` refuses or warns about before it starts anything (torch-free: a
`--workers N` host's parent runs it too)."""

from __future__ import annotations

import sys

from serving.settings import ServerSettings


def refused(settings: ServerSettings) -> bool:
    """True (after saying why) where the switches would hand the host to anyone without the
    token; a warning where the server is exposed without one."""
    exposed = settings.host not in ("127.0.0.1", "localhost", "::1")
    risky = (
        (
            settings.allow_shared_memory,
            "--allow-shared-memory",
            "read and write the server user's /dev/shm",
        ),
        (settings.allow_updates, "--allow-updates", "replace the weights"),
    )
    for on, flag, what in risky:
        if exposed and on and not settings.auth_token:
            print(
                f"seqserve: error: {flag} on {settings.host} needs --auth-token: anyone who can "
                f"reach this host could {what}",
                file=sys.stderr,
                flush=True,
            )
            return True
    if exposed and not settings.auth_token:
        print(
            f"seqserve: warning: binding {settings.host} with no --auth-token: anyone who can "
            "reach this host can query the model",
            file=sys.stderr,
            flush=True,
        )
    return False
