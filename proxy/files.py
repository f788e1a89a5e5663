"""State files only this user may read (issue 12, item 17).

The store holds the agents' credentials while a request waits; the CA key signs any
certificate; the session key mints reviewer sessions. Each is created 0600 in folders
created 0700, whatever the umask. Folders that already exist are left as they are (the
operator chose them); files of ours that are readable by others are narrowed to 0600.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents with mode 0700."""
    missing: list[Path] = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass


def private_file(path: Path, create: bool = True) -> None:
    """Make ``path`` (created empty when missing and ``create``) mode 0600."""
    if create:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.geteuid():
        os.chmod(path, 0o600)
