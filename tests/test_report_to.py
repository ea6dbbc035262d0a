"""``report_to``: the run's records in TensorBoard and Weights & Biases (wml_plugins.report_to).

The first tests need neither package (the key, the checks before any work, the scalars, the
observer's bookkeeping); the others install-skip without the extras and read back, with each
tool's own reader, what a tiny training loop wrote, comparing it with ``metrics.jsonl``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from run_helpers import read_metrics, tiny_config, tiny_loop

from wml_framework import config as cfgmod
from wml_framework.cli import main
from wml_framework.config import ConfigError
from wml_framework.plugin_system.host import PluginHost
from wml_framework.runner import WMLTrainer
from wml_framework.runtime import checkpoint, distributed
from wml_framework.training.report_to import DESTINATIONS, check_report_to
from wml_plugins.report_to.observer import RunObserver
from wml_plugins.report_to.scalars import scalars

PEER_TAGS = ("train/ce", "train/kl", "train/loss", "train/omega", "outer/omega", "eval/val_loss")


# -- the key ------------------------------------------------------------------------------------

def test_report_to_takes_names_from_toml_lists_and_from_the_command_line():
    """Catches a list key that turns its names into floats (the generic list coercion), a comma
    list not split, and HF's 'none' not read as nothing."""
    def given(value):
        return cfgmod.from_dict({"report_to": value}, check_plugins=False).report_to

    assert given(["wandb", "tensorboard"]) == ["wandb", "tensorboard"]
    assert given("tensorboard, wandb") == ["tensorboard", "wandb"]
    assert given("tensorboard,tensorboard") == ["tensorboard"]
    assert given("none") == given("") == given([]) == cfgmod.WMLConfig().report_to == []


def test_a_toml_file_may_name_one_destination_as_a_string(tmp_path):
    """``report_to = "wandb"`` (as Hugging Face writes it) means ["wandb"]. Catches the TOML type check
    that refuses a quoted value for every non-string key, telling the user to drop the quotes."""
    path = tmp_path / "c.toml"
    path.write_text('report_to = "wandb"\n')
    assert cfgmod.load(path).report_to == ["wandb"]


@pytest.mark.parametrize("value", [["tensorbord"], "wandb,mlflow", [1.0], "all"])
def test_an_unknown_destination_fails_in_one_line_naming_the_key_the_value_and_the_names(value):
    """Catches a name outside the choices accepted (it would log nowhere, silently)."""
    with pytest.raises(ConfigError) as caught:
        cfgmod.from_dict({"report_to": value}, check_plugins=False)
    message = str(caught.value)
    assert message == (f"config key 'report_to': value {value!r} is not allowed; "
                       "expected a list of names from 'tensorboard', 'wandb'")


def test_the_key_and_the_checks_know_the_same_names():
    """Catches a destination added to the config key but not to the install check, or the other way."""
    assert set(cfgmod.FIELDS["report_to"].metadata["spec"].choices) == set(DESTINATIONS)


def test_an_unknown_destination_stops_wml_run_before_the_run_folder_exists(tmp_path, corpus):
    """Catches the check made after work started (here: after the run folder was made)."""
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--corpus", str(corpus), "--out", str(out),
                                       "--set", "report_to=tensorboard,wandbb"])
    assert result.exit_code == 2
    assert ("Error: config key 'report_to': value 'tensorboard,wandbb' is not allowed; "
            "expected a list of names from 'tensorboard', 'wandb'") in result.output
    assert not out.exists()


@pytest.mark.parametrize("name", sorted(DESTINATIONS))
def test_a_destination_whose_package_is_missing_fails_before_any_work_naming_the_extra(
        name, tmp_path, corpus, monkeypatch):
    """sys.modules[name] = None is how Python says "not installed" to importlib.
    Catches a missing package noticed only once the peers' training starts (after the teacher's)."""
    monkeypatch.setitem(sys.modules, name, None)
    cfg = tiny_config(corpus, report_to=[name])
    trainer = WMLTrainer.from_config(cfg, tmp_path / "run", log=lambda m: None)
    with pytest.raises(ConfigError) as caught:
        trainer.train()
    assert str(caught.value) == (f"config key 'report_to': value [{name!r}] names {name!r}, whose package {name!r} "
                                 f"is not installed: pip install 'wml-framework[{name}]'")
    assert not (tmp_path / "run").exists()


def test_a_blocked_observer_fails_before_any_work(monkeypatch):
    """Catches report_to accepted while the plugin that would write is blocked (nothing would be logged)."""
    pytest.importorskip("tensorboard")
    monkeypatch.setenv("WML_BLOCK_PLUGINS", "tensorboard")
    cfg = cfgmod.from_dict({"report_to": ["tensorboard"]}, check_plugins=False)
    with pytest.raises(ConfigError, match=r"^config key 'report_to': value \['tensorboard'\] names 'tensorboard', "
                                          r"whose run observer plugin 'tensorboard' is not loaded; "
                                          r"WML_BLOCK_PLUGINS blocks it: unblock it$"):
        check_report_to(cfg, PluginHost())
    monkeypatch.delenv("WML_BLOCK_PLUGINS")
    check_report_to(cfg, PluginHost())


def test_a_resumed_run_may_start_or_stop_reporting(tmp_path):
    """`wml run --resume RUN --set report_to=tensorboard`: a run started without it gets it from the
    resume on (the checkpoint does not depend on it). Catches report_to missing from RESUME_KEYS."""
    cfgmod.save(cfgmod.from_dict({}, check_plugins=False), tmp_path / "config.toml")
    trainer = WMLTrainer.from_run_dir(tmp_path, overrides={"report_to": "tensorboard"}, log=lambda m: None)
    assert trainer.cfg.report_to == ["tensorboard"] and trainer.config_changed


# -- the scalars of a record -------------------------------------------------------------------------

def test_every_number_of_a_record_gets_a_tag_per_peer_and_new_fields_need_no_code():
    """Catches a field list written by hand (the lead's `words` would be lost), lists not split by
    peer, nested dicts (the updater's info) dropped, and text, None, booleans or skipped-peer indices logged."""
    record = {"kind": "train", "step": 7, "run_dir": "/r", "total_steps": 9, "lr": 0.01, "tokens": 512,
              "words": 1234, "ce": [3.0, 4.0], "kl": [0.5, None], "omega": [0.25, 0.75], "skipped": [1],
              "info": {"hypergradient": "exact", "direct": [1.0, 2.0], "eta": 0.5}, "note": "x", "flag": True,
              "inf": math.inf, "nested_list": [[1.0], [2.0]]}
    assert scalars(record, num_peers=2) == {
        "train/lr": 0.01, "train/tokens": 512.0, "train/words": 1234.0,
        "train/ce/peer_0": 3.0, "train/ce/peer_1": 4.0, "train/kl/peer_0": 0.5,
        "train/omega/peer_0": 0.25, "train/omega/peer_1": 0.75,
        "train/info/direct/peer_0": 1.0, "train/info/direct/peer_1": 2.0, "train/info/eta": 0.5}


# -- the observer's bookkeeping ------------------------------------------------------------------------

class _Recording:
    """A writer that keeps what it is told (the observer's part, without a tool)."""

    made: list = []

    def __init__(self, run_dir, start, config):
        self.run_dir, self.start, self.config, self.calls = run_dir, start, config, []
        _Recording.made.append(self)

    def write(self, values, step):
        self.calls.append(("write", step, values))

    def flush(self):
        self.calls.append(("flush",))

    def close(self):
        self.calls.append(("close",))


def _start(run, step=0, report_to=("rec",)):
    return {"run_dir": str(run), "step": step, "num_peers": 2, "config": {"report_to": list(report_to)},
            "total_steps": 4}


def test_the_observer_writes_the_runs_that_name_it_and_closes_each(tmp_path):
    """Catches a writer opened for a run that did not ask for it, records written to the wrong run,
    no flush at a checkpoint, and a writer left open at the run's end or when the run starts again."""
    _Recording.made = []
    observer = RunObserver("rec", _Recording)
    a, b = tmp_path / "a", tmp_path / "b"
    observer("run_start", _start(a, report_to=["rec", "other"]))
    observer("run_start", _start(b, report_to=["other"]))
    observer("train", {"kind": "train", "step": 1, "run_dir": str(a), "ce": [1.0, 2.0]})
    observer("train", {"kind": "train", "step": 1, "run_dir": str(b), "ce": [9.0, 9.0]})
    observer("checkpoint", {"step": 1, "run_dir": str(a)})
    observer("run_start", _start(a, step=1))                    # the same run again (a resume in this process)
    observer("eval", {"kind": "eval", "step": 2, "run_dir": str(a), "ensemble_val_loss": 3.0})
    observer("run_end", {"step": 2, "run_dir": str(a)})
    observer("eval", {"kind": "eval", "step": 3, "run_dir": str(a), "ensemble_val_loss": 3.0})
    first, second = _Recording.made
    assert first.run_dir == a and first.start == 0 and first.config == {"report_to": ["rec", "other"]}
    assert first.calls == [("write", 1, {"train/ce/peer_0": 1.0, "train/ce/peer_1": 2.0}), ("flush",), ("close",)]
    assert second.start == 1 and second.calls == [("write", 2, {"eval/ensemble_val_loss": 3.0}), ("close",)]
    assert observer.runs == {}


def test_only_rank_0_opens_a_writer(tmp_path, monkeypatch):
    """Under torchrun every rank would otherwise write the same event files (the core already
    announces events on rank 0 only; this guards the observer itself). Catches the rank check removed."""
    _Recording.made = []
    observer = RunObserver("rec", _Recording)
    monkeypatch.setattr(distributed, "current", lambda: distributed.Context(rank=1, world=2))
    observer("run_start", _start(tmp_path))
    assert _Recording.made == [] and observer.runs == {}
    monkeypatch.setattr(distributed, "current", lambda: distributed.Context(rank=0, world=2))
    observer("run_start", _start(tmp_path))
    assert len(_Recording.made) == 1


def test_at_exit_a_writer_that_fails_to_close_is_one_line_and_the_others_still_close(tmp_path, capsys):
    """Catches close_all stopping at the first writer that raises (the next run's log left unclosed)
    or letting a traceback out at exit."""
    class Broken(_Recording):
        def close(self):
            raise OSError("disk full")

    _Recording.made = []
    observer = RunObserver("rec", lambda run, start, config: (Broken if run.name == "a" else _Recording)(
        run, start, config))
    observer("run_start", _start(tmp_path / "a"))
    observer("run_start", _start(tmp_path / "b"))
    observer.close_all()
    assert _Recording.made[1].calls == [("close",)] and observer.runs == {}
    assert capsys.readouterr().err == (f"warning: run observer plugin 'rec' could not close its log of {tmp_path / 'a'} "
                                       "at exit: OSError: disk full\n")


# -- TensorBoard, read back by TensorBoard ----------------------------------------------------------------

def _train(tmp_path: Path, report_to: list[str], max_steps: int):
    """Four steps of two tiny peers, an ω step every 2, an evaluation and a checkpoint every 2."""
    _, _, loop = tiny_loop(tmp_path, report_to=report_to, max_steps=max_steps, outer_every=2, eval_interval=2,
                           checkpoint_interval=2)
    return loop


def _resume_after_losing_the_last_checkpoint(tmp_path: Path, report_to: list[str]):
    """As if the process had died at step 4 before its checkpoint: resume from step 2, which logs
    steps 3 and 4 again."""
    for found in checkpoint.found(tmp_path):
        if found.step == 4:
            found.path.unlink()
            found.path.with_suffix(".json").unlink()
    again = _train(tmp_path, report_to, max_steps=4)
    again.resume(checkpoint.load(tmp_path, warn=lambda m: None))
    assert again.state.step == 2
    again.train()


def _expected(run_dir: Path) -> dict[str, dict[int, float]]:
    """tag -> step -> value, from metrics.jsonl."""
    out: dict[str, dict[int, float]] = {}
    for record in read_metrics(run_dir):
        for tag, value in scalars(record, num_peers=2).items():
            out.setdefault(tag, {})[record["step"]] = value
    return out


def _tensorboard(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _assert_all_logged_once(logged: dict[str, list[tuple[int, float]]], run_dir: Path) -> None:
    expected = _expected(run_dir)
    assert set(logged) == set(expected)
    for tag, by_step in expected.items():
        assert [s for s, _ in logged[tag]] == sorted(by_step), tag          # each step once, in order
        assert [v for _, v in logged[tag]] == pytest.approx([by_step[s] for s in sorted(by_step)], rel=1e-6), tag


def test_tensorboard_gets_each_peers_terms_omega_and_the_ensemble_loss_at_their_steps(tmp_path):
    """Catches a term missing (or logged as one chart for all peers), values at the wrong step
    (say, the step before the record's), and values that differ from metrics.jsonl."""
    pytest.importorskip("tensorboard")
    _train(tmp_path, ["tensorboard"], max_steps=4).train()
    logged = _tensorboard(tmp_path)
    for prefix in PEER_TAGS:
        assert {f"{prefix}/peer_0", f"{prefix}/peer_1"} <= set(logged), prefix
    assert [s for s, _ in logged["eval/ensemble_val_loss"]] == [0, 2, 4]
    assert [s for s, _ in logged["train/ce/peer_1"]] == [1, 2, 3, 4]
    assert [s for s, _ in logged["outer/omega/peer_0"]] == [2, 4]
    _assert_all_logged_once(logged, tmp_path)


def test_tensorboard_of_a_resumed_run_appends_and_shows_each_step_once(tmp_path):
    """The interrupted process had logged steps 3 and 4; the resumed one logs them again after
    its checkpoint (step 2). Catches a resume that writes elsewhere, that keeps both copies (no
    purge), or that purges one step too many (the checkpoint's own step 2, which is not logged again)."""
    pytest.importorskip("tensorboard")
    _train(tmp_path, ["tensorboard"], max_steps=4).train()
    _resume_after_losing_the_last_checkpoint(tmp_path, ["tensorboard"])
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    _assert_all_logged_once(_tensorboard(tmp_path), tmp_path)


# -- Weights & Biases, offline, read back from its transaction log ------------------------------------------

@pytest.fixture()
def wandb_offline(tmp_path, monkeypatch):
    """wandb with its settings and caches in tmp_path, no WANDB_MODE (so the default, offline, holds);
    its service is torn down after the test, which also completes the files it writes."""
    wandb = pytest.importorskip("wandb")
    for var in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield wandb
    wandb.teardown()


def _wandb_logs(run_dir: Path, wandb) -> list[Path]:
    import wandb_records

    wandb.teardown()          # the service writes the file as it closes the run's stream
    logs = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    return [log for log in logs if wandb_records.records(log)]


def _wandb_logged(logs: list[Path]) -> dict[str, list[tuple[int, float]]]:
    import wandb_records

    out: dict[str, list[tuple[int, float]]] = {}
    for log in logs:
        for row in wandb_records.history(log):
            for key, value in row.items():
                if not key.startswith("_") and key != "step":
                    out.setdefault(key, []).append((row["step"], value))
    return out


@pytest.mark.slow
def test_wandb_offline_gets_each_peers_terms_omega_and_the_ensemble_loss_at_their_steps(tmp_path, wandb_offline):
    """Catches the same as the TensorBoard test, for W&B: a missing term, the wrong step (W&B's own
    row counter instead of the record's step), values unlike metrics.jsonl; and a run not offline."""
    import wandb_records

    _train(tmp_path, ["wandb"], max_steps=4).train()
    logs = _wandb_logs(tmp_path, wandb_offline)
    assert len(logs) == 1
    logged = _wandb_logged(logs)
    for prefix in PEER_TAGS:
        assert {f"{prefix}/peer_0", f"{prefix}/peer_1"} <= set(logged), prefix
    assert [s for s, _ in logged["eval/ensemble_val_loss"]] == [0, 2, 4]
    _assert_all_logged_once(logged, tmp_path)
    assert wandb_records.run_id(logs[0]) == (tmp_path / "wandb" / "wml-run-id").read_text().strip()


@pytest.mark.slow
def test_wandb_of_a_resumed_run_continues_the_same_run(tmp_path, wandb_offline):
    """Catches a resumed run that starts a new W&B run (a new id) instead of continuing the first,
    or that logs from step 1 again. The steps after the checkpoint are in both files (W&B offline
    cannot rewind; `wandb sync` uploads them in order)."""
    import wandb_records

    _train(tmp_path, ["wandb"], max_steps=4).train()
    _resume_after_losing_the_last_checkpoint(tmp_path, ["wandb"])
    first, second = _wandb_logs(tmp_path, wandb_offline)
    assert wandb_records.run_id(first) == wandb_records.run_id(second)
    assert [s for s, _ in _wandb_logged([second])["train/ce/peer_0"]] == [3, 4]
    assert [s for s, _ in _wandb_logged([first])["train/ce/peer_0"]] == [1, 2, 3, 4]


@pytest.mark.slow
def test_wandb_mode_from_the_environment_wins(tmp_path, wandb_offline, monkeypatch):
    """Catches offline forced on a user who set WANDB_MODE (here 'disabled': nothing is written)."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    _train(tmp_path, ["wandb"], max_steps=2).train()
    assert not list((tmp_path / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_a_run_left_open_is_finished_cleanly_at_exit(tmp_path, wandb_offline):
    """A run interrupted by a signal never sends run_end: its W&B run is finished at exit. Catches the
    at-exit close registered before W&B's own exit hooks, which then run first and stop W&B's service:
    the close fails with a traceback after every Ctrl-C."""
    run = tmp_path / "run"
    script = (
        "from wml_plugins.report_to import wandb_log\n"
        f"start = dict(run_dir={str(run)!r}, step=0, num_peers=2, config={{'report_to': ['wandb']}})\n"
        "wandb_log.wml_run_event('run_start', start)\n"
        f"wandb_log.wml_run_event('train', dict(kind='train', step=1, run_dir={str(run)!r}, ce=[1.5, 2.5]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ),
                          timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert _wandb_logged(_wandb_logs(run, wandb_offline)) == {"train/ce/peer_0": [(1, 1.5)],
                                                               "train/ce/peer_1": [(1, 2.5)]}
