"""A retry restarts at the step that needs it (issue 20 item 3): when the last install's record no
longer describes what the request needs, the pipeline asks the indexes again from the inputs it
has; install's retry after a fence conflict (``pipeline.again``) keeps them too and looks at the
target again. The configuration is read and the hardware probed once either way."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from packaging.version import Version

from backendpick.model.backend import Backend
from backendpick.model.hardware import Hardware
from backendpick.planning import pipeline
from backendpick.planning.request import Request
from backendpick.state import last_install
from tests.support.hermetic import subprocess_env
from tests.support.installed import Installed, environment

CPU = Backend.parse("cpu")


@pytest.fixture
def env(tmp_path: Path) -> dict:
    """A CPU index on disk with torch and torchvision, and nothing else of this machine."""
    for name, wheel in (("torch", "torch-2.5.1+cpu-py3-none-any.whl"),
                        ("torchvision", "torchvision-0.20.1+cpu-py3-none-any.whl")):
        page = tmp_path / "index" / "cpu" / name
        page.mkdir(parents=True)
        (page / "index.html").write_text(f'<a href="{wheel}">{wheel}</a>\n')
    return subprocess_env(home=tmp_path / "home", cache=tmp_path / "cache",
                          extra={"BACKENDPICK_INDEX_URL": (tmp_path / "index").as_uri() + "/{backend}"})


@pytest.fixture
def calls(monkeypatch) -> list:
    """Each configuration read and hardware probe of the pipeline, in order."""
    seen: list = []
    load = pipeline.config.load
    monkeypatch.setattr(pipeline, "probe", lambda facts, settings: seen.append("probe") or Hardware())
    monkeypatch.setattr(pipeline.config, "load", lambda *a, **kw: seen.append("config") or load(*a, **kw))
    return seen


def test_a_record_that_no_longer_holds_is_asked_again_from_the_same_inputs(tmp_path: Path, env: dict,
                                                                             calls: list) -> None:
    (tmp_path / "venv").mkdir()
    target = environment(tmp_path / "venv")  # torch is not installed
    req = Request(project_dir=tmp_path, requirements=("torch",), backend="cpu")
    # The last install's record of this very request and environment: it promised a finished
    # environment, yet torch is not there (the plan's backend phase has work to do).
    inputs = pipeline._configure(req, dict(env), target)
    last_install.save(inputs.state, request=pipeline._record(inputs, True).request_key,
                      environment=last_install.environment_key(target), backend=CPU, index_url="recorded",
                      torch="2.5.1+cpu", offers={CPU: [Version("2.5.1+cpu")]}, offers_source="index")
    calls.clear()
    prepared = pipeline.prepare(req, dict(env), target)
    assert prepared.offers.source == "index" and prepared.plan.backend == CPU
    assert calls == ["config", "probe"]  # once each, for both attempts


def test_install_s_retry_keeps_the_inputs_and_looks_at_the_target_again(tmp_path: Path, env: dict,
                                                                         calls: list) -> None:
    prefix = tmp_path / "venv"
    site = prefix / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    target = dataclasses.replace(environment(prefix), path=(str(site),))
    req = Request(project_dir=tmp_path, requirements=("torch",), backend="cpu")
    first = pipeline.prepare(req, dict(env), target)
    assert first.stack.torch is None and calls == ["config", "probe"]
    # The backend phase ran, then pip wanted torchvision in the rest phase: install moves it.
    Installed(prefix, "torch", "2.5.1+cpu", files={"torch/__init__.py": b"", "torch/version.py": b"cuda = None\n"})
    retried = pipeline.again(first, dataclasses.replace(req, extra_backend=("torchvision",)))
    assert calls == ["config", "probe"]  # nothing read or probed again
    assert retried.stack.version == "2.5.1+cpu" and retried.target.get("torch") is not None
    backend = next(p for p in retried.plan.phases if p.name == "backend")
    assert "torchvision" in " ".join(backend.requirements)
    assert retried.request_key != first.request_key  # install keeps the first one for its record
