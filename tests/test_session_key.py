"""The web UI's session key (review_ui/sessions.py): a key file too short to be one (empty or
truncated by a crash mid-write) is replaced, never used, so a cookie signed with the empty or
short key an attacker can guess is refused; a good key survives restarts."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from review_ui.sessions import KEY_BYTES, Sessions, _digest, load_key
from tests.conftest import Hitl
from tests.test_ui_web import UI_POLICY, _login_cookie, hashes, ui_config  # noqa: F401 - hashes: the fixture


def _forged(settings: object, key: bytes, password_hash: str) -> str:
    """A session cookie for alice signed with ``key``, as an attacker who guessed it makes one."""
    return Sessions(settings, None, key=key).issue("alice", "password", _digest(password_hash))[1]  # type: ignore[arg-type]


@pytest.mark.parametrize("content", [b"", b"\x00" * 5, secrets.token_bytes(KEY_BYTES - 1)],
                         ids=["empty", "truncated", "one-byte-short"])
def test_a_short_session_key_file_is_replaced_and_cookies_signed_with_it_are_refused(
        make_hitl: Callable[..., Hitl], hashes: dict[str, str], tmp_path: Path,  # noqa: F811
        content: bytes) -> None:
    key_path = tmp_path / "data" / "ui-session-key"
    key_path.parent.mkdir(parents=True)
    key_path.write_bytes(content)
    hitl = make_hitl(ui_config(hashes), policy=UI_POLICY)
    key = key_path.read_bytes()
    assert len(key) == KEY_BYTES and key != content
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in key_path.parent.iterdir() if p.name.startswith(".ui-session-key")] == []
    forged = _forged(hitl.runtime.settings, content, hashes["pw"])
    with httpx.Client(base_url=hitl.review_url, trust_env=False, timeout=30,
                      cookies={"hitl_session": forged}) as c:
        assert c.get("/api/me").status_code == 401
    with httpx.Client(base_url=hitl.review_url, trust_env=False, timeout=30) as c:
        _login_cookie(c)  # a real login works with the new key
        assert c.get("/api/me").json()["name"] == "alice"


def test_a_good_session_key_is_kept_so_sessions_survive_a_restart(
        make_hitl: Callable[..., Hitl], hashes: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    first = make_hitl(ui_config(hashes), policy=UI_POLICY)
    key_path = tmp_path / "data" / "ui-session-key"
    key = key_path.read_bytes()
    with httpx.Client(base_url=first.review_url, trust_env=False, timeout=30) as c:
        cookie = _login_cookie(c)
    second = make_hitl(ui_config(hashes), policy=UI_POLICY)
    assert key_path.read_bytes() == key
    with httpx.Client(base_url=second.review_url, trust_env=False, timeout=30,
                      cookies={"hitl_session": cookie}) as c:
        assert c.get("/api/me").json()["name"] == "alice"


def test_processes_creating_the_key_at_once_agree_on_one(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: load_key(tmp_path), range(32)))
    assert keys == {(tmp_path / "ui-session-key").read_bytes()}
