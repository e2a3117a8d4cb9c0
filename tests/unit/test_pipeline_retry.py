"""A retry restarts at the step that needs it (issue 20 item 3): when the last install's record no
longer describes what the request needs, the pipeline asks the indexes again from the inputs it
has: the configuration is read and the hardware probed once."""

from __future__ import annotations

from pathlib import Path

from packaging.version import Version

from backendpick.model.backend import Backend
from backendpick.model.hardware import Hardware
from backendpick.planning import pipeline
from backendpick.planning.request import Request
from backendpick.state import last_install
from tests.support.hermetic import subprocess_env
from tests.support.installed import environment

CPU = Backend.parse("cpu")


def test_a_record_that_no_longer_holds_is_asked_again_from_the_same_inputs(tmp_path: Path, monkeypatch) -> None:
    page = tmp_path / "index" / "cpu" / "torch"
    page.mkdir(parents=True)
    wheel = "torch-2.5.1+cpu-py3-none-any.whl"
    (page / "index.html").write_text(f'<a href="{wheel}">{wheel}</a>\n')
    env = subprocess_env(home=tmp_path / "home", cache=tmp_path / "cache",
                         extra={"BACKENDPICK_INDEX_URL": (tmp_path / "index").as_uri() + "/{backend}"})
    (tmp_path / "venv").mkdir()
    target = environment(tmp_path / "venv")  # torch is not installed
    req = Request(project_dir=tmp_path, requirements=("torch",), backend="cpu")
    calls = []
    load = pipeline.config.load
    monkeypatch.setattr(pipeline, "probe", lambda facts, settings: calls.append("probe") or Hardware())
    monkeypatch.setattr(pipeline.config, "load", lambda *a, **kw: calls.append("config") or load(*a, **kw))
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
