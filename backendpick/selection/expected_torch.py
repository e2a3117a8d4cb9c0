"""The torch a plan expects: the one its recipes' ``{torch}`` means and the one the backend
phase should install (for prebuilt wheels)."""

from __future__ import annotations

from backendpick.knowledge.facts import Facts
from backendpick.model.choice import Decision
from backendpick.selection import torch_version
from backendpick.selection.offers import Offers
from backendpick.target.installed_torch import TorchBuild


def torch_for_recipes(installed: TorchBuild | None, decision: Decision, offers: Offers | None, reqs,
                      facts: Facts) -> str | None:
    """The torch the recipes' ``{torch}`` means: the installed one (``installed``, from the look
    at the target) when the backend phase keeps it (same backend, requirement met), else the one
    it is expected to install."""
    predicted = predicted_torch(facts, decision, offers)
    keeps = installed is not None and installed.backend == decision.backend and \
        torch_version.torch_spec(reqs).contains(installed.version.split("+")[0], prereleases=True)
    if installed is not None and (keeps or predicted is None):
        return installed.version
    if predicted is not None:
        return predicted.version
    # Offline (the packaged table decided): an exact pin still says which torch it will be.
    pins = [s.version for s in torch_version.torch_spec(reqs) if s.operator in ("==", "===") and "*" not in s.version]
    return pins[0] if pins else None


def predicted_torch(facts: Facts, decision: Decision, offers: Offers | None):
    """The torch the backend phase should install: the newest offered build the plan allows.

    pip may resolve an older one (a companion's exact pin); install then chooses again."""
    from backendpick.target.installed_torch import predict_torch

    versions = offers.versions.get(decision.backend, []) if offers is not None and offers.source == "index" else []
    if decision.torch_releases:
        allowed = {r[:2] for r in decision.torch_releases}
        versions = [v for v in versions if v.release[:2] in allowed]
    return predict_torch(str(versions[-1]), decision.backend, facts) if versions else None
