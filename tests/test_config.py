"""Live settings without a cluster: the PUT /v1/config body, the settings and user_config."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgpack
import pytest
from pydantic import ValidationError

from serve.api import ApiError, ConfigRequest, decode_body
from serve.app import DualControllerDeployment
from serve.settings import ControllerSettings


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{}", "set at least one of budget, step_size, explore"),
        (b'{"explore": 1}', "field 'explore': Input should be less than 1, got 1"),
        (b'{"explore": -0.1}', "field 'explore': Input should be greater than or equal to 0"),
        (b'{"explore": "0.1"}', "field 'explore': Input should be a valid number, got \"0.1\""),
        (b'{"explore": NaN}', "field 'explore': Input should be a finite number"),
        (b'{"step_size": 0}', "field 'step_size': Input should be greater than 0, got 0"),
        (b'{"budget": true}', "field 'budget': Input should be a valid number, got true"),
        (b'{"explor": 0.1}', "field 'explor': Extra inputs are not permitted, got 0.1"),
    ],
)
def test_config_request_rejects(body: bytes, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        decode_body(body, ConfigRequest)
    assert caught.value.status == 422
    assert message in caught.value.message


def test_config_request_partial() -> None:
    assert decode_body(b'{"explore": 0}', ConfigRequest).changes() == {"explore": 0.0}
    body = b'{"step_size": 0.1, "budget": null}'
    assert decode_body(body, ConfigRequest).changes() == {"step_size": 0.1}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"explore": 1.0}, "less than 1"),
        ({"explore": -0.5}, "greater than or equal to 0"),
        ({"explore": 0.1, "policy": "sequential"}, "explore must be 0 with policy 'sequential'"),
    ],
)
def test_controller_settings_reject_explore(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ControllerSettings.model_validate(settings)


async def controller(settings: dict[str, Any]) -> Any:
    """The controller deployment's class, built and run in this process without Ray."""
    cls = DualControllerDeployment.func_or_class
    deployment = object.__new__(cls)
    await deployment.__init__(settings)
    return deployment


async def test_user_config_changes_explore_and_step_size() -> None:
    deployment = await controller({"budget": 3.0})
    await deployment.reconfigure({"budget": 3.0, "step_size": 0.1, "explore": 0.05})
    config = await deployment.get_config()
    assert config["budget"] == 3.0
    assert config["step_size"] == 0.1
    assert config["explore"] == 0.05
    assert (await deployment.settings())["explore"] == 0.05


@pytest.mark.parametrize(
    ("user_config", "message"),
    [
        ({"explore": 0.5}, r"user_config key 'explore': explore must be at most .*got 0\.5"),
        ({"explore": "high"}, r"user_config key 'explore': .*got 'high'"),
        ({"step_size": -1}, r"user_config key 'step_size': .*got -1"),
        ({"budget": 0.5}, r"user_config key 'budget': .*got 0\.5"),
        ({"budget": 4.0, "explore": 2.0}, r"user_config key 'explore': .*got 2\.0"),
        ({"explor": 0.1}, r"unknown user_config keys \['explor'\], allowed: budget, step_size"),
    ],
)
async def test_invalid_user_config_changes_nothing(
    user_config: dict[str, Any], message: str
) -> None:
    deployment = await controller({"budget": 3.0})
    before = await deployment.get_config()
    assert before["user_config_error"] is None
    await deployment.reconfigure(user_config)
    after = await deployment.get_config()
    assert re.search(message, after["user_config_error"])
    assert after["budget"] == before["budget"]
    assert after["step_size"] == before["step_size"]
    assert after["explore"] == before["explore"]
    assert after["lambda"] == before["lambda"]

    # A valid user_config applies and clears the error.
    await deployment.reconfigure({"budget": 3.5})
    after = await deployment.get_config()
    assert after["user_config_error"] is None
    assert after["budget"] == 3.5


async def test_set_config_rejects_as_a_whole() -> None:
    deployment = await controller({"budget": 3.0})
    before = await deployment.get_config()
    state = await deployment.set_config({"step_size": 0.2, "explore": 0.5})
    assert state["field"] == "explore"
    assert "0.5" in state["error"]
    assert await deployment.get_config() == before


async def test_sequential_controller_rejects_explore() -> None:
    deployment = await controller({"budget": 3.0, "policy": "sequential"})
    state = await deployment.set_config({"explore": 0.05})
    assert state["field"] == "explore"
    assert "does not learn from probes" in state["error"]
    assert (await deployment.get_config())["explore"] == 0.0


async def test_restart_keeps_api_settings(tmp_path: Path) -> None:
    """An unchanged user_config after a restart does not undo values set through the API."""
    settings = {"budget": 3.0, "state_path": str(tmp_path / "state.msgpack")}
    user_config = {"budget": 3.0, "step_size": 0.05, "explore": 0.0}
    first = await controller(settings)
    await first.reconfigure(user_config)
    state = await first.set_config({"budget": 4.0, "step_size": 0.1, "explore": 0.1})
    assert "error" not in state

    second = await controller(settings)
    await second.reconfigure(user_config)
    config = await second.get_config()
    assert config["budget"] == 4.0
    assert config["step_size"] == 0.1
    assert config["explore"] == 0.1

    # A changed user_config value applies; the unchanged ones still do not.
    await second.reconfigure({**user_config, "explore": 0.02})
    config = await second.get_config()
    assert config["explore"] == 0.02
    assert config["step_size"] == 0.1
    assert config["budget"] == 4.0


async def test_restart_from_version_1_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "state.msgpack"
    old = {
        "version": 1, "budget": 2.5, "lambda": 0.02, "step_size": 0.1, "rule": "additive",
        "requests": 7, "total_cost": 21.0, "requests_since_budget": 2, "cost_since_budget": 6.0,
        "window": [3.0, 3.0], "actions": {"vote@3": 7}, "batches": {},
        "extra": {"config_budget": 2.5},
    }  # fmt: skip
    path.write_bytes(msgpack.packb(old))
    deployment = await controller({"budget": 3.0, "state_path": str(path)})
    # The user_config budget is the one applied last, so it does not retarget.
    await deployment.reconfigure({"budget": 2.5, "step_size": 0.05})
    config = await deployment.get_config()
    assert config["budget"] == 2.5
    assert config["lambda"] == 0.02
    # The old snapshot recorded no step_size from user_config, so this one applies.
    assert config["step_size"] == 0.05
    assert config["explore"] == 0.0
    assert (await deployment.stats())["requests"] == 7
