"""The last install's key (planning/request.py ``request_key``): derived from the request and the
inputs read from it, so every field of ``Request``, of the settings and of the requirements as
read changes it, and a field added later does too without anyone listing it. Only ``--refresh``,
which asks the indexes again, leaves it as it is (the install it makes records under the key the
next plain run computes)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from backendpick.inputs import config, requirements
from backendpick.knowledge import facts as facts_mod
from backendpick.planning.request import NOT_IN_KEY, Request, _plain, request_key

FACTS = facts_mod.load()
PYPROJECT = """[project]
name = "demo"
version = "0"
dependencies = ["torch>=2.5", "tqdm"]

[tool.backendpick]
backend = "cu124"
index-url = "https://alice:s3cret@mirror.example/whl/{backend}"
"""


@pytest.fixture
def inputs(tmp_path: Path) -> dict:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    settings = config.load(FACTS, project_dir=tmp_path, env={})
    wanted = requirements.gather((), (), settings.pyproject, (), ())
    return {"settings": settings, "wanted": wanted, "hardware": {"nvidia_driver": "550.54.14"}, "python": "/v/bin/python",
            "policy": []}


def _changed(value):
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, Path):
        return value / "other"
    if isinstance(value, tuple):
        return (*value, "other")
    if isinstance(value, dict):
        return {**value, "other": "1"}
    if dataclasses.is_dataclass(value):
        first = dataclasses.fields(value)[0].name
        return dataclasses.replace(value, **{first: _changed(getattr(value, first))})
    if value is None:
        return "other"
    raise AssertionError(f"no other value for {value!r}")


REQUEST = Request(project_dir=Path("proj"), requirements=("torch",), python=Path("/v/bin/python"))


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Request)])
def test_every_request_field_but_refresh_changes_the_key(inputs: dict, name: str) -> None:
    other = dataclasses.replace(REQUEST, **{name: _changed(getattr(REQUEST, name))})
    if name in NOT_IN_KEY:
        assert request_key(other, **inputs) == request_key(REQUEST, **inputs)
    else:
        assert request_key(other, **inputs) != request_key(REQUEST, **inputs)


def test_only_refresh_is_left_out() -> None:
    assert set(NOT_IN_KEY) == {"refresh"}


@pytest.mark.parametrize("part, field", [
    *(("settings", f.name) for f in dataclasses.fields(config.Settings)),
    *(("wanted", f.name) for f in dataclasses.fields(requirements.Wanted)),
])
def test_every_input_field_changes_the_key(inputs: dict, part: str, field: str) -> None:
    value = inputs[part]
    other = {**inputs, part: dataclasses.replace(value, **{field: _changed(getattr(value, field))})}
    assert request_key(REQUEST, **other) != request_key(REQUEST, **inputs)


def test_a_setting_counts_by_its_value_and_urls_without_credentials(inputs: dict) -> None:
    settings = inputs["settings"]
    moved = dataclasses.replace(settings, backend=config.Setting(settings.backend.value, "BACKENDPICK_BACKEND"))
    assert request_key(REQUEST, **{**inputs, "settings": moved}) == request_key(REQUEST, **inputs)
    other_password = dataclasses.replace(settings, index_url=config.Setting(
        settings.index_url.value.replace("s3cret", "n3w"), settings.index_url.source))
    assert request_key(REQUEST, **{**inputs, "settings": other_password}) == request_key(REQUEST, **inputs)


def test_the_key_is_the_same_from_one_run_to_the_next(inputs: dict) -> None:
    """Nothing in it is an object's identity (``<... at 0x...>``), and no credential is in it."""
    text = json.dumps(_plain({"request": REQUEST, **inputs}), sort_keys=True)
    assert " at 0x" not in text and "s3cret" not in text and "alice" not in text
