"""What a change keeps a copy of before it runs (state/kept_copies.py), where the copy comes from, and what
is refused; the snapshot that names the copies (state/snapshots.py). Installed distributions are laid
out as pip leaves them (tests/support/installed.py); no pip runs here."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from backendpick.errors import KeepError
from backendpick.knowledge import facts
from backendpick.model.environment import Installed as Entry
from backendpick.model.plan import UNINSTALL, Phase
from backendpick.state import kept_copies, snapshots, wheel_cache
from tests.support.installed import Installed, environment

FACTS = facts.load()


def remove(*names: str) -> Phase:
    return Phase("remove", names, action=UNINSTALL)


def install(name: str, *reqs: str, upgrade: bool = False, skip: str | None = None) -> Phase:
    return Phase(name, reqs, upgrade=upgrade, skip=skip)


def entry(name: str, version: str, *requires: str, installer: str = "pip", direct_url: str | None = None) -> Entry:
    return Entry(name, version, requires, installer, direct_url, None)


# -- which ------------------------------------------------------------------------------------------


def test_from_an_index_is_what_name_and_version_give_back():
    assert kept_copies.from_an_index(entry("numpy", "1.26.4"))
    assert kept_copies.from_an_index(entry("torch", "2.5.1+cu124", installer="uv"))  # a backend's own tag
    assert not kept_copies.from_an_index(entry("torch", "2.4.0a0+f70bd71a48.nv24.6"))  # NGC: no index has it
    assert not kept_copies.from_an_index(entry("torch", "2.5.1+cu124", installer="conda"))
    assert not kept_copies.from_an_index(entry("tool", "1.0", direct_url='{"url": "file:///w/tool.whl"}'))
    assert not kept_copies.from_an_index(entry("flash-attn", "2.6.1"), ["flash-attn"])  # built against torch
    assert not kept_copies.from_an_index(entry("odd", "not a version"))


def test_which_installers_install_from_an_index_is_facts_tomls_one_table(monkeypatch):
    """[torch.foreign] index-installers says it for kept copies and the torch origin alike."""
    assert facts.load().index_installers == {"pip", "uv"}
    monkeypatch.setattr(facts, "load", lambda: replace(FACTS, index_installers=frozenset({"pip", "pdm"})))
    assert kept_copies.from_an_index(entry("numpy", "1.26.4", installer="pdm"))
    assert not kept_copies.from_an_index(entry("numpy", "1.26.4", installer="uv"))


def test_at_risk_is_what_the_phases_remove_or_replace(tmp_path: Path):
    env = environment(tmp_path, entry("torch", "2.5.1+cu124", "filelock", "libfoo"), entry("torchvision", "0.20.1+cu124"),
                      entry("flash-attn", "2.6.1", "torch"), entry("filelock", "3.16.1"),
                      entry("libfoo", "1.0", installer="conda"), entry("tqdm", "4.0"), entry("einops", "0.8.0"))
    phases = [
        remove("flash-attn"),
        install("backend", "torch==2.7.1", "torchvision"),  # torch moves; torchvision 0.20.1 still fits
        Phase("build-requirements", ("tqdm==9",), target_dir="/state/build-env"),
        install("rest", "einops>=1", skip="already satisfied"),
    ]
    certain, maybe = kept_copies.at_risk(phases, env, ["flash-attn"])
    assert certain == ["flash-attn", "torch"]
    # pip may replace torch's dependencies too: conda's libfoo comes back from no index,
    # filelock from its index.
    assert maybe == ["libfoo"]
    # A direct URL replaces what is installed; -U may replace what no index gives back.
    url = install("rest", "einops @ https://example.org/einops-0.8.0-py3-none-any.whl")
    assert kept_copies.at_risk([url], env)[0] == ["einops"]
    ngc = environment(tmp_path, entry("torch", "2.4.0a0+f70bd71a48.nv24.6"))
    assert kept_copies.at_risk([install("backend", "torch", upgrade=True)], ngc)[0] == ["torch"]
    assert kept_copies.at_risk([install("backend", "torch")], ngc) == ([], [])


def test_dry_run_names_what_would_be_kept_and_its_installed_size(tmp_path: Path):
    demo = Installed(tmp_path / "env", "torch", "2.4.0a0+f70bd71a48.nv24.6")
    env = environment(demo.prefix, demo.entry())
    [planned] = kept_copies.preview([remove("torch")], env)
    assert planned.words() == "torch 2.4.0a0+f70bd71a48.nv24.6 (10.2 KB installed)"
    assert not (tmp_path / "state").exists()


# -- from where ---------------------------------------------------------------------------------------


def test_a_copy_is_repacked_once_then_reused(tmp_path: Path):
    demo = Installed(tmp_path / "env")
    env = environment(demo.prefix, demo.entry())
    first = kept_copies.keep(env, ["demo"], [], tmp_path / "state")
    [copy] = first.copies.values()
    assert copy.how == kept_copies.REPACKED and copy.path(tmp_path / "state").is_file()
    assert kept_copies.check(copy, tmp_path / "state") is None
    again = kept_copies.keep(env, ["demo"], [], tmp_path / "state")
    assert again.copies["demo"] == kept_copies.Copy(**{**copy.to_json(), "how": kept_copies.REUSED})
    assert len(list((tmp_path / "state" / "kept").glob("*/*.whl"))) == 1
    copy.path(tmp_path / "state").write_bytes(b"not the wheel")
    assert "is not the file kept" in kept_copies.check(copy, tmp_path / "state")


def test_a_build_from_the_wheel_cache_is_kept_as_the_wheel_it_was(tmp_path: Path):
    demo = Installed(tmp_path / "env", "flash-attn", "2.6.1")
    built = kept_copies.keep(environment(demo.prefix, demo.entry()), ["flash-attn"], [], tmp_path / "scratch")
    wheel = built.copies["flash-attn"].path(tmp_path / "scratch")
    key = wheel_cache.Key("flash-attn", "2.6.1", "2.5.1+cu124", "cuda12.4", False, "cp311", "linux_x86_64")
    stored = wheel_cache.store(tmp_path / "cache", key, wheel, wheel_cache.built_with(key))
    kept = kept_copies.keep(environment(demo.prefix, demo.entry()), ["flash-attn"], [], tmp_path / "state",
                            cache_base=tmp_path / "cache")
    copy = kept.copies["flash-attn"]
    assert copy.how == kept_copies.FROM_CACHE and copy.path(tmp_path / "state").read_bytes() == stored.wheel.read_bytes()


def test_what_must_go_but_cannot_be_kept_is_refused_before_any_change(tmp_path: Path):
    editable = Installed(tmp_path / "env", "torch", "2.7.0a0+git1a2b3c4",
                         direct_url='{"url": "file:///src/pytorch", "dir_info": {"editable": true}}')
    changed = Installed(tmp_path / "env", "helper", "1.0")
    (changed.lib / "demo_top.py").write_text("patched = True\n")
    env = environment(tmp_path / "env", editable.entry(), changed.entry())
    snap = snapshots.record(env, tmp_path / "state")
    with pytest.raises(KeepError) as err:
        kept_copies.before_change([remove("torch")], env, snap, tmp_path / "state")
    assert err.value.message == ("torch 2.7.0a0+git1a2b3c4 would be removed or replaced, but no copy of it can be "
                                 "kept: it is an editable install of file:///src/pytorch: its files are that source tree")
    assert err.value.hint.startswith("nothing was changed; backendpick removes nothing it cannot put back")
    assert "pip uninstall torch" in err.value.hint
    # Only possibly replaced: said, not refused.
    kept = kept_copies.keep(env, [], ["helper"], tmp_path / "state")
    assert kept.unkept == {"helper": "demo_top.py was changed since it was installed (its hash is not RECORD's)"}


def test_the_snapshot_names_the_copies_and_reads_back(tmp_path: Path):
    demo = Installed(tmp_path / "env", "torch", "2.4.0a0+f70bd71a48.nv24.6")
    env = environment(demo.prefix, demo.entry())
    state = tmp_path / "state"
    snap = snapshots.record(env, state, command="install --backend cpu torch", torch=demo.version, backend="cu125")
    snap, kept = kept_copies.before_change([remove("torch")], env, snap, state)
    [copy] = kept.copies.values()
    read = snapshots.parse(snap.path)
    assert read == snap
    p = read.packages["torch"]
    assert (p.kept, p.files, p.installer, p.requested) == (copy.to_json(), copy.identity, "pip", True)
    assert p.matches(demo.entry())
    assert (read.by, read.command, read.torch, read.backend) == ("install", "install --backend cpu torch",
                                                                 demo.version, "cu125")
    # What the snapshot already keeps is not kept twice (an install's retry).
    again, more = kept_copies.before_change([remove("torch")], env, snap, state, skip=["torch"])
    assert more.copies == {} and again == snap


def test_a_plain_restore_takes_the_newest_snapshot_taken_before_an_install(tmp_path: Path):
    state = tmp_path / "state"
    env = environment(tmp_path / "env", entry("tqdm", "4.0"))
    first = snapshots.record(env, state, command="install tqdm")
    undo = snapshots.record(env, state, by=snapshots.BY_RESTORE, command=f"restore {first.id}")
    assert snapshots.load(state, None).id == first.id
    assert snapshots.load(state, undo.id).by == snapshots.BY_RESTORE
    listed = snapshots.listing(state)
    assert [(i.id, i.default) for i in listed] == [(first.id, True), (undo.id, False)]
    assert listed[0].to_json()["command"] == "install tqdm"
    # A snapshot of an older backendpick (name, version, URL only) still reads, as an install's.
    old = state / "history" / "20000101-000000-0.json"
    old.write_text(json.dumps({"id": "20000101-000000-0", "packages": {
        "tqdm": {"name": "tqdm", "version": "4.0", "direct_url": None}}}))
    p = snapshots.parse(old).packages["tqdm"]
    assert (p.files, p.kept, p.installer) == (None, None, None) and p.matches(entry("tqdm", "4.0"))
    old.write_text(json.dumps({"packages": {"tqdm": {"name": "tqdm", "version": "4.0", "kept": {"wheel": 1}}}}))
    with pytest.raises(Exception, match="names a kept copy without its file, hash and size"):
        snapshots.parse(old)
