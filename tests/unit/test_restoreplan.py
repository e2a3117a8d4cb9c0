"""The phases back to a snapshot (state/restore_plan.py), without running them: where each distribution
comes from, what is removed first, what a killed pip left; and the metadata put back after."""

from __future__ import annotations

import os
from pathlib import Path

from backendpick.execute import engines
from backendpick.model.environment import Installed as Entry
from backendpick.state import kept_copies, restore_plan, snapshots
from backendpick.target import distfiles
from tests.support.installed import Installed, environment

INDEX = "http://index.test/{backend}/simple"
USER_ENV = {"PIP_CONSTRAINT": "/etc/ngc.txt", "HOME": "/h"}
PIP = engines.Renderer(engines.PIP, "/env/bin/python", ("/env/bin/python", "-m", "pip"), user_env=USER_ENV)


def sources(state: Path, **kw) -> restore_plan.Sources:
    defaults = dict(index_template=INDEX, default_index="https://pypi.test/simple",
                    family=frozenset({"torch", "torchvision"}), build_names=frozenset({"flash-attn"}), state=state)
    return restore_plan.Sources(**{**defaults, **kw})


def test_each_distribution_comes_back_from_the_best_source(tmp_path: Path):
    state = tmp_path / "state"
    ngc = Installed(tmp_path / "then", "torch", "2.4.0a0+f70bd71a48.nv24.6")
    flash = Installed(tmp_path / "then", "flash-attn", "2.6.1", files={"flash_attn/__init__.py": b"built = '2.4'\n"},
                      direct_url='{"url": "git+https://github.com/Dao-AILab/flash-attention", "vcs_info": {}}')
    then = environment(tmp_path / "then", ngc.entry(), flash.entry(), Entry("tqdm", "4.0", (), "pip", None, None),
                       Entry("torchvision", "0.20.1+cu124", (), "pip", None, None))
    snap = snapshots.record(then, state)
    snap, kept = kept_copies.before_change([restoreplan_remove("torch")], then, snap, state)
    # Now: another torch, flash-attn rebuilt at the same version, tqdm gone, einops new.
    cpu = Installed(tmp_path / "now", "torch", "2.7.1+cpu")
    rebuilt = Installed(tmp_path / "now", "flash-attn", "2.6.1", files={"flash_attn/__init__.py": b"built = '2.7'\n"})
    now = environment(tmp_path / "now", cpu.entry(), rebuilt.entry(), Entry("einops", "0.8.0", (), "pip", None, None),
                      Entry("torchvision", "0.22.1+cpu", (), "pip", None, None))
    plan = restore_plan.plan(snap, now, sources(state))
    names = [p.name for p in plan.phases]
    assert names == ["remove", "restore-kept", "restore-backend", "restore"]
    assert plan.phases[0].requirements == ("einops", "flash-attn", "torch", "torchvision")
    [torch_req] = plan.phases[1].requirements
    copy = kept.copies["torch"]
    assert torch_req == f"torch @ {copy.path(state).as_uri()}#sha256={copy.sha256}"
    offline = PIP.command(plan.phases[1])
    assert "--no-index" in offline.argv and offline.env == {"PIP_CONFIG_FILE": os.devnull}
    assert "PIP_CONSTRAINT" in offline.unset  # an image's constraint cannot block the bytes that were there
    backend = PIP.command(plan.phases[2])  # the backend index alone, no dependencies (the snapshot lists them)
    assert backend.argv[-4:] == ("--index-url", "http://index.test/cu124/simple", "--no-deps", "torchvision==0.20.1+cu124")
    assert backend.env["PIP_CONFIG_FILE"] == os.devnull and "PIP_CONSTRAINT" in backend.unset
    assert plan.phases[2].requirements == ("torchvision==0.20.1+cu124",)
    assert plan.phases[2].index_url == "http://index.test/cu124/simple"
    assert plan.phases[3].requirements == ("tqdm==4.0",)
    # flash-attn of the snapshot has no kept copy, the cache has no wheel of it, and it came from a
    # git checkout: never an isolated source build, and said before anything changes.
    assert plan.unavailable == ("flash-attn==2.6.1 (no kept copy, and no wheel in the cache built for torch "
                                "2.4.0a0+f70bd71a48.nv24.6; backendpick does not build it again in pip's isolation)",)
    assert set(plan.restored) == {"torch", "flash-attn", "tqdm", "torchvision"}
    # Same version, other files: not the snapshot's flash-attn.
    assert "flash-attn 2.6.1: not the files recorded (another build of that version)" in restore_plan.differences(snap, now)


def restoreplan_remove(*names: str):
    from backendpick.model.plan import UNINSTALL, Phase

    return Phase("remove", names, action=UNINSTALL)


def test_what_a_killed_pip_left_is_cleared_by_backendpick(tmp_path: Path):
    state = tmp_path / "state"
    torch = Installed(tmp_path / "env", "torch", "2.5.1+cu124", direct_url=None)
    env = environment(tmp_path / "env", torch.entry())
    snap = snapshots.record(env, state)
    # pip was killed writing torch 2.7.1: its METADATA there, no RECORD yet; pip refuses to
    # uninstall that, so backendpick removes the folder itself.
    half = Installed(tmp_path / "env2", "torch", "2.7.1+cu128")
    (half.dist_info / "RECORD").unlink()
    plan = restore_plan.plan(snap, environment(tmp_path / "env2", half.entry()), sources(state))
    first = plan.phases[0]
    argv = engines.Renderer(engines.PIP, "/env/bin/python", ("/env/bin/python", "-m", "pip"),
                            runner_python="/bp/python").command(first).argv
    assert first.name == restore_plan.INCOMPLETE and argv[-1] == str(half.dist_info) and argv[0] == "/bp/python"
    assert [p.name for p in plan.phases[1:]] == ["restore-backend"]  # nothing left for pip to uninstall
    # Its stash of an uninstall (the folder renamed ~orch), once torch is back.
    site = torch.lib
    (site / "~orch").mkdir()
    (site / "~orch-2.5.1+cu124.dist-info").mkdir()
    (site / "~nrelated").mkdir()  # stands for no installed name
    (site / "torch").mkdir(exist_ok=True)
    assert [p.name for p in restore_plan.pip_stashes(env)] == ["~orch", "~orch-2.5.1+cu124.dist-info"]


def test_put_back_writes_the_recorded_markers_with_their_record_rows(tmp_path: Path):
    state = tmp_path / "state"
    conda = Installed(tmp_path / "then", "torch", "2.5.1", installer="conda", direct_url=None)
    snap = snapshots.record(environment(tmp_path / "then", conda.entry()), state)
    # pip installed it back from the kept copy: pip's INSTALLER, a direct_url.json naming the copy.
    back = Installed(tmp_path / "now", "torch", "2.5.1", direct_url='{"url": "file:///state/kept/x.whl"}')
    (back.dist_info / "REQUESTED").unlink()
    now = environment(tmp_path / "now", back.entry())
    restore_plan.put_back(snap, now, ["torch"])
    assert (back.dist_info / "INSTALLER").read_text() == "conda\n"
    assert not (back.dist_info / "direct_url.json").exists()
    assert (back.dist_info / "REQUESTED").exists()  # recorded as requested (the helper writes it)
    rows = {r.path: r for r in distfiles.read_record(back.dist_info)}
    assert f"{back.dist_info.name}/direct_url.json" not in rows
    assert rows[f"{back.dist_info.name}/INSTALLER"].size == len("conda\n")
    assert distfiles.damaged(back.dist_info) is None
    assert snapshots.parse(snap.path).packages["torch"].matches(now.installed["torch"])
