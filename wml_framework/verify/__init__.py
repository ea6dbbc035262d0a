"""Numerical checks of every registered loss and updater, built-in or third-party (``wml verify``).

Why: a loss or updater that is subtly wrong (a sign, a missing stop-gradient, a mean over
sequences instead of tokens) still trains; only a check against finite differences and against
a trusted formula finds it. Every plugin gets the generic checks (derivatives by central
differences in float64, invariants, finite results on extreme logits); every plugin is also
checked against the reference points it declared when it registered (the built-ins declare
``wml_reference``, the float64 NumPy oracle). Nothing here knows a plugin by name. Every check runs
on two label layouts: a quarter of the labels ignored, and masked-LM labels (about 15% scored, a
sequence with none, n = 1 for some M; the check's name then ends with ``problems.MASKED``), and a
batch with no scored label at all must stay finite.

``run_checks(host) -> list[CheckResult]`` is the API; the command only formats it.

May import: :mod:`wml_framework.config`, :mod:`wml_framework.plugin_system`, :mod:`wml_framework.api`;
nothing of training or evaluation: the checks build their own small problems.
"""

from __future__ import annotations

import math
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Optional

import torch

from ..plugin_system.host import Entry, PluginHost, get_host, resolve_options
from . import loss_checks as L
from . import updater_checks as U
from .loss_checks import Failed
from .problems import MASKED, loss_cases, make_config, rel

__all__ = ["TOL_FD", "TOL_EXACT", "TOL_FAST", "CheckResult", "unverified", "run_checks", "format_table"]

#: tolerances (relative errors): against finite differences, invariants, fast paths
TOL_FD = 1e-6
TOL_EXACT = 1e-12
TOL_FAST = 1e-8


@dataclass
class CheckResult:
    """One line of the verification table."""

    kind: str
    name: str
    plugin: str
    check: str
    max_rel_error: Optional[float]
    tolerance: Optional[float]
    passed: bool
    detail: str = ""
    note: str = ""      # what the check could not cover (printed once as a note, whether it passed or not)

    def to_dict(self) -> dict:
        return asdict(self)


@contextmanager
def _one_thread() -> Iterator[None]:
    """The problems are tiny: thread start-up costs more than it saves (and thrashes a busy host)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _Recorder:
    def __init__(self, entry: Entry):
        self.entry, self.results = entry, []

    def add(self, check: str, error: Optional[float], tol: Optional[float], detail: str = "") -> None:
        ok = error is None or (math.isfinite(error) and error <= tol)
        if error is not None and not ok and not detail:
            detail = f"error {error:.3g} > tolerance {tol:g}"
        self.results.append(CheckResult(self.entry.kind, self.entry.name, self.entry.plugin, check, error, tol, ok, detail))

    def fail(self, check: str, tol: Optional[float], exc: BaseException) -> None:
        if isinstance(exc, Failed):
            detail = str(exc)
        else:
            frame = _blame(exc)
            detail = f"{type(exc).__name__}: {exc} (at {frame.filename}:{frame.lineno})"
        self.results.append(CheckResult(self.entry.kind, self.entry.name, self.entry.plugin, check, None, tol, False, detail))

    def run(self, check: str, tol: Optional[float], fn: Callable[[], Optional[float]]) -> None:
        try:
            self.add(check, fn(), tol)
        except Exception as exc:  # noqa: BLE001 - a raising plugin is a failed check, named
            self.fail(check, tol, exc)

    def run_many(self, group: str, tol: float, fn: Callable[[], dict], notes: Optional[list] = None,
                 tag: str = "") -> None:
        """Several values computed together, one row each (a value may come with where its worst
        case was); if the computation raises, one failed row. ``notes`` (filled by ``fn``) go on every
        row; ``tag`` ends every row's name (MASKED for the masked-label problems)."""
        first = len(self.results)
        try:
            for check, value in fn().items():
                err, where = value if isinstance(value, tuple) else (value, "")
                ok = math.isfinite(err) and err <= tol
                detail = "" if ok else f"error {err:.3g} > tolerance {tol:g}" + (f" ({where})" if where else "")
                self.add(f"{group}: {check}{tag}", err, tol, detail)
        except Exception as exc:  # noqa: BLE001
            self.fail(group + tag, tol, exc)
        for row in self.results[first:]:
            row.note = "; ".join(notes or [])


def _library_dirs() -> tuple:
    import sysconfig

    import torch as _torch

    here = __file__.rsplit("/verify/", 1)[0]
    return (here, _torch.__file__.rsplit("/", 1)[0], sysconfig.get_paths()["stdlib"])


def _blame(exc: BaseException):
    """The frame to show for a plugin's exception: the deepest one in the plugin's own code, not in
    wml, torch or the standard library (a TypeError raised deep in torch names the line that called it)."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if not f.filename.startswith(_library_dirs())]
    return (own or frames)[-1]


def _check_loss(host: PluginHost, entry: Entry, seed: int) -> list[CheckResult]:
    rec = _Recorder(entry)

    def make(cfg, options):
        return host.create("loss", entry.name, cfg, options=options)

    try:
        loss = make(make_config(3), {})
    except Exception as exc:  # noqa: BLE001
        rec.fail("create", None, exc)
        return rec.results
    for masked in (False, True):
        _loss_checks(rec, entry, make, loss, seed, masked)
    rec.run("all labels ignored: finite, no gradient", TOL_EXACT, lambda: L.all_ignored(loss, seed))
    return rec.results


def _loss_checks(rec: _Recorder, entry: Entry, make: Callable, loss, seed: int, masked: bool) -> None:
    """Every generic check and every reference point on one label layout: the dense problems, or
    the masked-label ones (then every check's name ends with MASKED)."""
    tag = MASKED if masked else ""
    cases = list(loss_cases(seed, masked))

    def over(l, fn) -> float:  # noqa: E741
        return max(fn(l, p) for p in cases)

    g = torch.Generator().manual_seed(seed + (2 if masked else 1))
    rec.run("result shapes, total = Σ per_peer" + tag, TOL_EXACT, lambda: over(loss, L.result_shapes))
    rec.run("grad logits vs finite differences (ω const)" + tag, TOL_FD,
            lambda: over(loss, lambda l, p: L.grad_logits_fd(l, p, False, g)))
    rec.run("grad logits vs finite differences (ω grad)" + tag, TOL_FD,
            lambda: over(loss, lambda l, p: L.grad_logits_fd(l, p, True, g)))
    rec.run("stop-gradient on targets" + tag, TOL_EXACT, lambda: over(loss, L.stop_gradient))
    rec.run("grad omega vs finite differences" + tag, TOL_FD, lambda: over(loss, lambda l, p: L.grad_omega_fd(l, p, g)))
    rec.run("∂²/∂ω∂z (hypergradient) vs finite differences" + tag, TOL_FD,
            lambda: over(loss, lambda l, p: L.mixed_fd(l, p, g)))
    if callable(getattr(loss, "logit_grads", None)):
        rec.run("logit_grads vs finite differences" + tag, TOL_FD, lambda: over(loss, lambda l, p: L.logit_grads_fd(l, p, g)))
    if callable(getattr(loss, "mixed_omega_grad", None)):
        def both_temperatures() -> float:        # closed forms often special-case T = 1
            unit = make(make_config(3, temperature=1.0, kd_temperature=1.0), {})
            return max(over(l, lambda l_, p: L.mixed_closed_form(l_, p, g)) for l in (loss, unit))

        rec.run("mixed_omega_grad vs double backward (T = 1, T ≠ 1)" + tag, TOL_FAST, both_temperatures)
    rec.run("ignored labels: no effect, no gradient" + tag, TOL_EXACT, lambda: over(loss, L.ignored_positions))
    rec.run("ignored labels: not counted (padded batch)" + tag, TOL_EXACT, lambda: over(loss, L.ignored_not_counted))
    rec.run("token mean (repeated, reshaped batch)" + tag, TOL_EXACT, lambda: over(loss, L.token_mean))
    rec.run("finite on ±1e4 logits (float32)" + tag, None, lambda: L.extreme(loss, torch.float32, seed, masked))
    rec.run("finite on ±1e4 logits (bfloat16)" + tag, None, lambda: L.extreme(loss, torch.bfloat16, seed, masked))
    for point in entry.references:
        notes: list[str] = []
        rec.run_many(f"reference: {point.name}", point.tolerance,
                     lambda point=point, notes=notes: L.check_reference(make, point, seed,
                                                                        lambda o: resolve_options(entry, o), notes,
                                                                        masked),
                     notes, tag)


def _check_updater(host: PluginHost, entry: Entry, seed: int) -> list[CheckResult]:
    rec = _Recorder(entry)

    def make(cfg, options, M):
        return host.create("updater", entry.name, cfg, M, options=options)

    def make_loss(cfg):
        return host.create("loss", cfg.loss, cfg, options=cfg.plugin_options(cfg.loss))

    probs = U.UpdaterProblems(make, make_loss, seed)
    probs.entry = entry
    try:
        steps = bool(make(make_config(2), {}, 2).needs_validation)
        next(probs.cases())
    except Exception as exc:  # noqa: BLE001
        rec.fail("create (with the default loss)", None, exc)
        return rec.results
    rec.run("initial ω on simplex", TOL_EXACT, lambda: U.initial_on_simplex(probs))
    if steps:
        rec.run("step ω on simplex", TOL_EXACT, lambda: U.step_on_simplex(probs))
        rec.run("deterministic", TOL_EXACT, lambda: U.deterministic(probs))
        rec.run("peers untouched", TOL_EXACT, lambda: U.peers_untouched(probs))
    rec.run("state round-trip", TOL_EXACT, lambda: U.state_round_trip(probs, steps))
    for point in entry.references:
        if steps:
            rec.run_many(f"reference: {point.name}", point.tolerance,
                         lambda point=point: U.check_reference(probs, point, lambda o: resolve_options(entry, o)))
        else:
            rec.run_many(f"reference: {point.name}", point.tolerance, lambda point=point: _initial_reference(probs, point))
    if steps:            # an updater that is never stepped never sees labels: nothing to mask
        rec.run("step ω on simplex" + MASKED, TOL_EXACT, lambda: U.step_on_simplex(probs, masked=True))
        for point in entry.references:
            rec.run_many(f"reference: {point.name}", point.tolerance,
                         lambda point=point: U.check_reference(probs, point, lambda o: resolve_options(entry, o),
                                                               masked=True), tag=MASKED)
        rec.run("all labels ignored (train or held-out batch): finite step on simplex", TOL_EXACT,
                lambda: U.all_ignored(probs))
    return rec.results


def _initial_reference(probs: "U.UpdaterProblems", point) -> dict[str, float]:
    """For an updater that is never stepped: its initial ω against the point's ω."""
    config_keys, options = L.split_settings(point)
    options = resolve_options(probs.entry, options)
    worst = 0.0
    for M, cfg, case in probs.cases(config_keys):
        expected = point.expected(case.as_problem(cfg, options))
        worst = max(worst, rel(probs.make(cfg, options, M).initial_omega().detach().numpy(), expected["omega"]))
    return {"initial omega": worst}


def unverified(results: list[CheckResult], host: PluginHost) -> list[str]:
    """Notes on what verify could not check: the losses and updaters that declare no reference point
    (verify can tell their gradients are consistent, not that they compute the function they were
    meant to), and the reference points held at a setting verify would otherwise vary."""
    checked = {(r.kind, r.name) for r in results if r.kind in ("loss", "updater")}
    notes = [f"{kind} {name!r} declares no reference point: verify checked that it is self-consistent, not that "
             "it computes the intended function (see docs/plugins.md §10)"
             for kind, name in sorted(checked) if not host.get(kind, name).references]
    for r in results:
        for note in filter(None, r.note.split("; ")):
            line = f"{r.kind} {r.name!r}: {note} (see docs/plugins.md §10)"
            if line not in notes:
                notes.append(line)
    return notes


def run_checks(host: Optional[PluginHost] = None, *, seed: int = 0, names: Optional[list[str]] = None) -> list[CheckResult]:
    """Check every registered loss and updater (or only those in ``names``); one result per check.

    Updaters are stepped on linear peers with the default configuration's loss (or the loss a
    reference point names). Plugins that failed to load are reported as failed rows."""
    host = host or get_host()
    results: list[CheckResult] = []
    for failure in host.failures if names is None else []:
        results.append(CheckResult("plugin", failure.plugin, failure.plugin, "loads and registers", None, None,
                                   False, failure.line()))
    with _one_thread(), torch.random.fork_rng():
        torch.manual_seed(seed)
        for entry in host.entries("loss"):
            if names is None or entry.name in names:
                results.extend(_check_loss(host, entry, seed))
        for entry in host.entries("updater"):
            if names is None or entry.name in names:
                results.extend(_check_updater(host, entry, seed))
    return results


def format_table(results: list[CheckResult]) -> str:
    """A fixed-width table: plugin, check, max relative error, tolerance, result."""
    rows = [("plugin", "check", "max rel error", "tolerance", "result")]
    for r in results:
        err = "-" if r.max_rel_error is None else f"{r.max_rel_error:.2e}"
        tol = "-" if r.tolerance is None else f"{r.tolerance:.0e}"
        verdict = "pass" if r.passed else f"FAIL: {r.detail}"
        rows.append((f"{r.kind}:{r.name}", r.check, err, tol, verdict))
    widths = [max(len(row[k]) for row in rows) for k in range(4)]
    lines = ["  ".join(cell.ljust(widths[k]) for k, cell in enumerate(row[:4])) + "  " + row[4] for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
