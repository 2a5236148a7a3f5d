"""The keys file: one key system for the API keys, the users of persistent conversations and the limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import Settings, UserKeys, create_app
from gateway.core.principal import Limits
from gateway.http.keys import read_keys_file, shorthand_keys
from tests.fakes import FakeEngine


def keys_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keys"
    path.write_text(text)
    return path


def test_a_line_names_the_keys_user_class_and_limits(tmp_path: Path) -> None:
    path = keys_file(
        tmp_path,
        "# key user settings\n"
        "sk-alice alice class=pro weight=2.5 concurrent_requests=16 requests_per_minute=600 "
        "tokens_per_minute=200000 priority=yes user_field=yes  # a trailing comment\n",
    )
    ((key, principal),) = read_keys_file(path)
    assert key == "sk-alice"
    assert (principal.user, principal.user_class) == ("alice", "pro")
    assert principal.limits == Limits(
        concurrent_requests=16,
        requests_per_minute=600,
        tokens_per_minute=200_000,
        weight=2.5,
        priority=True,
        split_by_user_field=True,
    )
    assert principal.quota is not None and "sk-alice" not in principal.quota


def test_the_old_api_key_file_and_users_file_are_keys_files_as_they_are(tmp_path: Path) -> None:
    """`--api-key-file` (a key per line) and `--users-file` (`KEY USER_ID`) are retired: `--keys-file` reads both."""
    bare = read_keys_file(keys_file(tmp_path, "\nsk-first\n\nsk-second\n"))
    assert [k for k, _ in bare] == ["sk-first", "sk-second"]
    assert all(p.user.startswith("key-") and p.user_class == "default" and p.limits == Limits() for _, p in bare)
    assert bare[0][1].user != bare[1][1].user
    users = read_keys_file(keys_file(tmp_path, "# key user\nkey-alice alice\nkey-bob bob\n"))
    assert [(k, p.user) for k, p in users] == [("key-alice", "alice"), ("key-bob", "bob")]
    assert UserKeys(users).user_for_key("key-bob") == "bob"


def test_keys_of_one_user_share_it_and_each_keeps_its_own_limits(tmp_path: Path) -> None:
    entries = read_keys_file(keys_file(tmp_path, "sk-new alice concurrent_requests=1\nsk-old alice\n"))
    keys = UserKeys(entries)
    new, old = keys.principal_for_key("sk-new"), keys.principal_for_key("sk-old")
    assert new is not None and old is not None
    assert new.user == old.user == "alice" and new.quota != old.quota


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        pytest.param("sk-a alice speed=9", "unknown setting 'speed'", id="unknown-setting"),
        pytest.param("sk-a alice concurrent_requests=0", "concurrent_requests must be", id="zero"),
        pytest.param("sk-a alice requests_per_minute=1.5", "requests_per_minute must be", id="not-whole"),
        pytest.param("sk-a alice weight=-1", "weight must be", id="negative-weight"),
        pytest.param("sk-a alice weight=inf", "weight must be", id="infinite-weight"),
        pytest.param("sk-a alice priority=maybe", "priority must be yes or no", id="switch"),
        pytest.param("sk-a alice class=session", "class 'session'", id="reserved-class"),
        pytest.param("sk-a alice class=a{b}", "class 'a{b}'", id="class-chars"),
        pytest.param("sk-a alice bob", "expected NAME=VALUE", id="two-users"),
        pytest.param("sk-a alice\nsk-a bob", "a key appears twice", id="duplicate"),
    ],
)
def test_a_mistake_names_the_file_and_line(tmp_path: Path, line: str, complaint: str) -> None:
    path = keys_file(tmp_path, f"# keys\n{line}\n")
    with pytest.raises(ValueError, match=complaint) as raised:
        read_keys_file(path)
    assert str(raised.value).startswith(f"{path}:{line.count(chr(10)) + 2}: ")


def test_a_bad_keys_file_stops_the_gateway_at_start(tmp_path: Path) -> None:
    path = keys_file(tmp_path, "sk-a alice weight=0\n")
    with pytest.raises(ValueError, match=f"{path}:1: weight"):
        create_app(Settings(keys_file=path), engine=FakeEngine())


def test_api_key_is_a_shorthand_each_its_own_user(tmp_path: Path) -> None:
    (_, pa), (_, pb) = shorthand_keys(["sk-a", "sk-b"])
    assert pa.user != pb.user and pa.user_class == pb.user_class == "default"
    with pytest.raises(ValueError, match="given twice"):
        UserKeys([*shorthand_keys(["sk-a"]), *read_keys_file(keys_file(tmp_path, "sk-a alice\n"))])
    with pytest.raises(ValueError, match="whitespace"):
        shorthand_keys(["sk a"])
