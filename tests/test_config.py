"""Strict session-config validation and server config from the environment."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app import ApiError, ServerConfig, SessionConfig, validate_session_config


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"bogus": 1}, "bogus"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": 9}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"input_sample_rate": 16001}, "input_sample_rate"),
        ({"input_sample_rate": 16000.5}, "input_sample_rate"),
        ({"output_sample_rate": True}, "output_sample_rate"),
        ({"max_response_output_tokens": 10**30}, "max_response_output_tokens"),
        ({"responder": "gpt"}, "responder"),
        ({"voice": 3}, "voice"),
        ({"instructions": ["x"]}, "instructions"),
        ({"instructions": "x" * 16001}, "instructions"),
        ({"turn_detection": {"threshold": 1.5}}, "turn_detection.threshold"),
        ({"turn_detection": {"silence_duration_ms": -1}}, "turn_detection.silence_duration_ms"),
        ({"turn_detection": {"type": "semantic"}}, "turn_detection.type"),
        ({"turn_detection": {"nope": 1}}, "turn_detection.nope"),
        ({"turn_detection": "on"}, "turn_detection"),
    ],
)
def test_bad_values_name_their_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as info:
        validate_session_config(body)
    assert info.value.status == 422
    assert info.value.param == param


def test_partial_config_merges_over_defaults() -> None:
    cfg = validate_session_config(
        {"turn_detection": {"threshold": 0.7}, "temperature": 1, "responder": "none"}
    )
    assert cfg.turn_detection is not None
    assert cfg.turn_detection.threshold == 0.7
    assert cfg.turn_detection.silence_duration_ms == 500
    assert cfg.temperature == 1.0
    assert cfg.responder == "none"
    assert validate_session_config({"turn_detection": None}).turn_detection is None
    assert (
        validate_session_config({"max_response_output_tokens": "inf"}).max_response_output_tokens
        == 4096
    )


def test_rates_are_fixed_after_creation() -> None:
    base = validate_session_config({"input_sample_rate": 24000})
    with pytest.raises(ApiError) as info:
        validate_session_config({"input_sample_rate": 16000}, base, update=True)
    assert info.value.param == "input_sample_rate"
    same = validate_session_config({"input_sample_rate": 24000, "voice": "joe"}, base, update=True)
    assert same.input_sample_rate == 24000


def test_config_round_trips_to_json() -> None:
    cfg = SessionConfig()
    again = validate_session_config(json.loads(json.dumps(cfg.to_json())))
    assert again == cfg


def test_server_config_from_env_and_overrides() -> None:
    env = {"VOXWIRE_PORT": "9001", "VOXWIRE_SESSION_IDLE_TTL_S": "12.5", "VOXWIRE_API_KEY": "k"}
    cfg = ServerConfig.from_env(env, host="0.0.0.0", port=None)
    assert (cfg.port, cfg.session_idle_ttl_s, cfg.api_key, cfg.host) == (9001, 12.5, "k", "0.0.0.0")
    with pytest.raises(ValueError, match="VOXWIRE_PORT"):
        ServerConfig.from_env({"VOXWIRE_PORT": "eighty"})
