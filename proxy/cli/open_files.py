"""The open-files limit of a serving process.

Every agent connection is a descriptor, and a held request keeps its agent's connection open
while a person decides: ten thousand waiting agents are ten thousand descriptors, plus the
upstream pool and the store. The usual soft limit (1024) would stop the gate at about a
thousand connections, with ``accept`` failing for everyone else. The hard limit is what the
operator (systemd's ``LimitNOFILE``, Kubernetes, ``ulimit -Hn``) allows; a server that needs
many connections raises its soft limit to it, as nginx (``worker_rlimit_nofile``) and Go's
runtime do. asyncio polls with epoll, so descriptors above 1024 are safe.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("hitl.proxy")

CEILING = 1 << 20  # when the hard limit is unlimited: what the kernel's nr_open allows by default
LOW = 4096  # below this after raising, say so at start: the operator's hard limit is the cap


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # a container's nr_open below the hard limit
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
    if soft != resource.RLIM_INFINITY and soft < LOW:
        log.warning("the open-files limit is %d: each agent connection and each held request "
                    "waiting takes one; raise the hard limit (ulimit -Hn, systemd LimitNOFILE)", soft)
    return soft
