"""The embedded issuer of `shinchoku up`: its key on disk, the settings it gives the services, `shinchoku token`."""

from __future__ import annotations

import json
import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from joserfc import jwt
from typer.testing import CliRunner

from contracts.agencies import Agency
from shinchoku.cli import app
from shinchoku.issuer import (
    EmbeddedIssuer,
    IssuerNotFound,
    bearer_headers,
    local_token,
    parse_duration,
    principal_named,
)
from shinchoku.launch import SERVICES, ConfigurationError, StackSettings, plan_launch
from shinchoku.stack import Stack
from shinchoku_runtime.auth import EMBEDDED_ISSUER, AuthSettings, Principal, Role, TokenVerifier
from tests.faults.stack import environment, stack_environment

runner = CliRunner()


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def verify(data_dir: Path, token: str) -> Principal:
    """As a service of the stack verifies: embedded mode, the keys `up` published under the data directory."""
    return await TokenVerifier.from_settings(AuthSettings(_env_file=None), data_dir=data_dir).verify(token)


def test_the_signing_key_is_generated_once_private_and_kept(tmp_path: Path) -> None:
    issuer = EmbeddedIssuer.prepare(tmp_path)
    assert _mode(issuer.key_path.parent) == 0o700
    assert _mode(issuer.key_path) == 0o600
    private = json.loads(issuer.key_path.read_text())
    assert private["kty"] == "EC"
    assert private["crv"] == "P-256"
    assert private["d"]
    published = json.loads(issuer.jwks_path.read_text())
    assert [k["kid"] for k in published["keys"]] == [issuer.kid]
    assert "d" not in published["keys"][0], "the JWKS holds the public key only"
    assert private["d"] not in issuer.jwks_path.read_text()
    # Kept across restarts; a lost JWKS is written again from the key; loose modes are tightened.
    issuer.jwks_path.unlink()
    issuer.key_path.chmod(0o644)
    again = EmbeddedIssuer.prepare(tmp_path)
    assert again.kid == issuer.kid
    assert json.loads(again.jwks_path.read_text()) == published
    assert _mode(again.key_path) == 0o600
    assert EmbeddedIssuer.prepare(tmp_path / "other").kid != issuer.kid


def test_an_unreadable_key_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(IssuerNotFound, match="shinchoku up"):
        EmbeddedIssuer.load(tmp_path)
    issuer = EmbeddedIssuer.prepare(tmp_path)
    issuer.key_path.write_text("{not json")
    with pytest.raises(ValueError, match="remove it"):
        EmbeddedIssuer.prepare(tmp_path)


async def test_minted_tokens_verify_as_the_services_verify(tmp_path: Path) -> None:
    issuer = EmbeddedIssuer.prepare(tmp_path)
    for name, principal in {
        "mof": Principal(Role.agency, Agency.mof, "tanaka"),
        "secretariat": Principal(Role.secretariat, None, "tanaka"),
        "operator": Principal(Role.operator, None, "tanaka"),
    }.items():
        token = issuer.mint(principal_named(name, "tanaka"), ttl=timedelta(minutes=15))
        assert await verify(tmp_path, token) == principal
        claims = jwt.decode(token, issuer.key).claims
        assert claims["iss"] == EMBEDDED_ISSUER
        assert claims["aud"] == "shinchoku"
        assert claims["exp"] - claims["iat"] == 900


def test_up_gives_the_services_the_issuer_and_keeps_the_key_to_itself(tmp_path: Path) -> None:
    env = stack_environment()
    with environment(env):
        launch = plan_launch(tmp_path / "var", StackSettings(), base_env=env)
    issuer = EmbeddedIssuer.load(tmp_path / "var")
    secret = json.loads(issuer.key_path.read_text())["d"]
    for spec in launch.services:
        assert spec.env["SHINCHOKU_AUTH_MODE"] == "embedded"
        assert spec.env["SHINCHOKU_AUTH_ISSUER"] == EMBEDDED_ISSUER
        assert spec.env["SHINCHOKU_AUTH_JWKS_URL"] == issuer.jwks_path.as_uri()
        assert not any(secret in value for value in spec.env.values()), spec.name
        assert {s.name for s in launch.services} == set(SERVICES)
    assert launch.stack.auth_issuer == EMBEDDED_ISSUER


def test_up_with_an_identity_provider_makes_no_key(tmp_path: Path) -> None:
    env = stack_environment(
        {"SHINCHOKU_AUTH_MODE": "oidc", "SHINCHOKU_AUTH_ISSUER": "https://idp.example.org/realms/shinchoku"}
    )
    with environment(env):
        launch = plan_launch(tmp_path / "var", StackSettings(), base_env=env)
    assert not (tmp_path / "var" / "auth").exists()
    assert launch.stack.auth_issuer == "https://idp.example.org/realms/shinchoku"
    assert all(s.env["SHINCHOKU_AUTH_MODE"] == "oidc" for s in launch.services)
    launch.stack.save()
    result = runner.invoke(app, ["token", "mof", "--data-dir", str(tmp_path / "var")])
    assert result.exit_code == 1
    assert "https://idp.example.org/realms/shinchoku" in result.stderr


def test_up_refuses_insecure_auth_settings(tmp_path: Path) -> None:
    env = stack_environment({"SHINCHOKU_AUTH_MODE": "oidc", "SHINCHOKU_AUTH_ISSUER": "http://idp.example.org"})
    with environment(env), pytest.raises(ConfigurationError, match=r"SHINCHOKU_AUTH_.*plain http"):
        plan_launch(tmp_path / "var", StackSettings(), base_env=env)


@pytest.fixture
def stack_dir(tmp_path: Path) -> Path:
    stack = Stack(data_dir=tmp_path / "var", auth_issuer=EMBEDDED_ISSUER)
    stack.save()
    EmbeddedIssuer.prepare(stack.data_dir)
    return stack.data_dir


async def test_token_prints_a_token_for_the_principal(stack_dir: Path) -> None:
    result = runner.invoke(app, ["token", "mof", "--sub", "田中", "--ttl", "15m", "--data-dir", str(stack_dir)])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert "\n" not in token
    assert await verify(stack_dir, token) == Principal(Role.agency, Agency.mof, "田中")
    claims = jwt.decode(token, EmbeddedIssuer.load(stack_dir).key).claims
    assert claims["exp"] - claims["iat"] == 15 * 60
    assert "agency mof" in result.stderr
    result = runner.invoke(app, ["token", "secretariat", "--data-dir", str(stack_dir)])
    assert result.exit_code == 0, result.output
    assert (await verify(stack_dir, result.stdout.strip())).role is Role.secretariat


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["mofa"], "unknown principal 'mofa'"),
        (["public"], "unknown principal 'public'"),
        (["agency"], "unknown principal 'agency'"),
        (["mof", "--ttl", "soon"], "not a duration"),
        (["mof", "--ttl", "0s"], "positive"),
        (["mof", "--ttl", "2d"], "at most"),
    ],
)
def test_token_refuses_what_it_cannot_mint_with_exit_2(stack_dir: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["token", *args, "--data-dir", str(stack_dir)])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stdout == ""
    if "unknown principal" in message:
        assert all(a.value in result.stderr for a in Agency)


def test_token_without_a_stack(tmp_path: Path) -> None:
    result = runner.invoke(app, ["token", "mof", "--data-dir", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert "shinchoku up" in result.stderr


async def test_cli_verbs_mint_their_own_token_unless_given_one(
    stack_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHINCHOKU_TOKEN", raising=False)
    token = local_token(stack_dir)
    assert token is not None
    assert (await verify(stack_dir, token)).role is Role.secretariat
    claims = jwt.decode(token, EmbeddedIssuer.load(stack_dir).key).claims
    assert claims["exp"] - claims["iat"] == 300
    minted = bearer_headers(stack_dir, principal="operator")["Authorization"].removeprefix("Bearer ")
    assert (await verify(stack_dir, minted)).role is Role.operator
    assert bearer_headers(stack_dir, token="given") == {"Authorization": "Bearer given"}
    monkeypatch.setenv("SHINCHOKU_TOKEN", "from-env")
    assert bearer_headers(stack_dir) == {"Authorization": "Bearer from-env"}
    monkeypatch.delenv("SHINCHOKU_TOKEN")
    assert local_token(tmp_path / "none") is None
    assert bearer_headers(tmp_path / "none") == {}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("1d", 86400), (" 2H ", 7200)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "h", "1.5h", "-1h", "1w", "0", "1h 30m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|positive"):
        parse_duration(text)
