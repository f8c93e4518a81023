"""API keys: hashed, constant-time, reloaded from the keys file, scoped per RPC; no built-in key unless asked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import pytest

import cm3leon_client as api
from cm3leon_client import Client
from services.auth import ADMIN, DEV_KEY, READ, SCOPES, SUBMIT, KeyRing, hashed_entry, key_digest, parse_keys
from services.settings import GatewaySettings
from tests.security.conftest import KEYS, write_keys
from tests.security.helpers import code_of


def ring(tmp_path: Path, entries: dict, **settings: object) -> KeyRing:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(entries))
    return KeyRing.from_settings(GatewaySettings(api_keys_file=str(path), api_keys_reload_s=0, **settings))


def test_keys_are_held_as_hashes_only(tmp_path: Path) -> None:
    keys = ring(tmp_path, {**hashed_entry("secret-1", "a", (READ,)), "plain-dev-key": "b"})
    held = json.dumps([list(keys.fixed), list(keys.from_file)])
    assert "secret-1" not in held and "plain-dev-key" not in held and key_digest("secret-1") in held
    assert keys.lookup("secret-1").tenant == "a" and keys.lookup("secret-1").scopes == {READ}
    assert keys.lookup("plain-dev-key").scopes == {"submit", "read", "corpus-write"}
    assert keys.lookup("secret-2") is None and keys.lookup("") is None


def test_no_built_in_key_unless_the_development_flag_is_set(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no API keys"):
        KeyRing.from_settings(GatewaySettings())
    assert KeyRing.from_settings(GatewaySettings(dev_keys=True)).lookup(DEV_KEY).scopes == SCOPES
    assert ring(tmp_path, hashed_entry("k", "a")).lookup(DEV_KEY) is None


def test_bad_entries_are_refused_naming_them() -> None:
    with pytest.raises(ValueError, match="unknown scopes"):
        parse_keys({"sha256:" + "0" * 64: {"tenant": "a", "scopes": ["root"]}}, "test")
    with pytest.raises(ValueError, match="64 hex"):
        parse_keys({"sha256:xyz": {"tenant": "a"}}, "test")


def test_the_keys_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    keys = ring(tmp_path, hashed_entry("old", "a"))
    assert keys.lookup("old") is not None
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(hashed_entry("new", "a", (ADMIN,))))
    os.utime(path, ns=(10**18, 10**18))
    assert keys.lookup("old") is None and keys.lookup("new").scopes == {ADMIN}
    path.write_text("{broken")  # a bad edit keeps the last good keys
    os.utime(path, ns=(2 * 10**18, 2 * 10**18))
    assert keys.lookup("new") is not None


@pytest.mark.slow
def test_a_revoked_key_is_refused_without_a_restart(secure_target: str, keys_file: Path) -> None:
    write_keys(keys_file, {**KEYS, "key-temporary": ("tenant-c", (SUBMIT, READ))})
    with Client(secure_target, "key-temporary") as temporary:
        assert temporary.list().jobs is not None
        write_keys(keys_file, KEYS)
        code, details = code_of(lambda: temporary.list())
        assert code == grpc.StatusCode.UNAUTHENTICATED and "x-api-key" in details


@pytest.mark.slow
def test_scopes_are_enforced_per_rpc(secure_target: str, client_a: Client) -> None:
    job = client_a.submit(api.text_to_image("a red circle", seed=1))
    with Client(secure_target, "key-read-only") as reader:
        assert reader.get(job.job_id).job_id == job.job_id  # same tenant, read scope
        code, details = code_of(lambda: reader.submit(api.text_to_image("a blue square", seed=2)))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "'submit'" in details
        code, details = code_of(lambda: reader.cancel(job.job_id))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "'submit'" in details
        code, details = code_of(lambda: reader.delete_documents(["x"]))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "'corpus-write'" in details
    with Client(secure_target, "not-a-key") as stranger:
        assert code_of(lambda: stranger.get(job.job_id))[0] == grpc.StatusCode.UNAUTHENTICATED
