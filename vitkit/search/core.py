"""``run_search``: the budgeted Pareto search over composed recipes (see :mod:`vitkit.search.halving`).

Selection uses the **val** split (successive halving over val-image fidelities); only the chosen candidate is
measured on the **test** split, at the last rung's timing repeats, and written as an artifact (``best/``). Every
finished evaluation is appended to ``search.jsonl`` first, so a killed search continues where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, VitkitError
from ..models.fingerprint import model_fingerprint
from .halving import OBJECTIVES, first_rung_size, rank_key, successive_halving, within
from .log import LOG_NAME, SearchLog, data_fingerprint
from .space import Candidate, Fidelity, SearchSpace, read_space

_log = logging.getLogger(__name__)


class NoFeasibleCandidate(VitkitError):
    """No candidate at full fidelity is within the accuracy budget; ``closest`` lists the nearest ones."""

    def __init__(self, message: str, closest: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.closest = closest


@dataclass
class SearchOutcome:
    history: list[list[tuple[Candidate, dict]]]
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    closest: list[dict[str, Any]]
    evaluations: int  # evaluations measured in this process (logged ones are not counted)
    logged: int  # evaluations read back from the log
    front: list[dict[str, Any]] = field(default_factory=list)
    test: dict[str, Any] | None = None
    seconds: float = 0.0


def search(
    candidates: Sequence[Candidate],
    evaluate: Callable[[Candidate, Fidelity], dict[str, Any]],
    log: SearchLog,
    *,
    fidelities: Sequence[Fidelity],
    eta: int,
    budget: int,
    objective: str,
    max_drop: float,
    seed: int = 0,
    on_eval: Callable[[Candidate, int, dict], None] | None = None,
    on_rung: Callable[[set[str]], None] | None = None,
) -> SearchOutcome:
    """Successive halving with the log in front of ``evaluate``; returns the rows, the best and the closest."""
    counts = {"new": 0, "logged": 0}

    def cached(cand: Candidate, rung: int) -> dict[str, Any]:
        fid = fidelities[rung]
        key = SearchLog.key(cand.cid, fid.key(), objective)
        metrics = log.get(key)
        if metrics is None:
            metrics = evaluate(cand, fid)
            log.put(key, cand.cid, cand.label, rung, metrics)
            counts["new"] += 1
        else:
            counts["logged"] += 1
        if on_eval is not None:
            on_eval(cand, rung, metrics)
        return metrics

    history = successive_halving(
        candidates,
        cached,
        images=[f.images for f in fidelities],
        eta=eta,
        budget=budget,
        objective=objective,
        max_drop=max_drop,
        seed=seed,
        on_promote=None if on_rung is None else (lambda alive: on_rung({c.cid for c in alive})),
    )
    latest: dict[str, dict[str, Any]] = {}
    for rung, results in enumerate(history):
        for cand, m in results:
            latest[cand.cid] = {"cid": cand.cid, "label": cand.label, "rung": rung, **m}
    rows = sorted(latest.values(), key=lambda r: rank_key(r, objective, max_drop))
    final = [{"cid": c.cid, "label": c.label, "rung": len(history) - 1, **m} for c, m in history[-1]]
    feasible = sorted((r for r in final if within(r, max_drop)), key=lambda r: rank_key(r, objective, max_drop))
    closest = sorted(rows, key=lambda r: (r["drop_pt"], rank_key(r, objective, max_drop)))[:5]
    return SearchOutcome(history, rows, feasible[0] if feasible else None, closest, counts["new"], counts["logged"])


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / LOG_NAME).is_file())):
        raise ConfigError(f"output {out} exists and holds no {LOG_NAME}: choose another output directory")


def run_search(
    model: str,
    data: str,
    out: str | Path,
    *,
    objective: str = "throughput",
    max_drop: float = 1.0,
    budget: int = 12,
    space: SearchSpace | str | Path | None = None,
    seed: int = 0,
    threads: int | None = 2,
    arch: Any = None,
    calib_n: int = 32,
    progress: Callable[[str], None] | None = None,
    evaluator_factory: Callable[..., Any] | None = None,
) -> SearchOutcome:
    """Search ``space`` for the best ``objective`` within ``max_drop`` top-1 points of ``model`` on ``data``.

    Writes ``out/search.jsonl`` (log), ``out/pareto.{md,json,png}`` and ``out/best/`` (artifact of the chosen
    recipe, with its test-split report; plus ``model.int8.onnx`` / ``model.onnx`` for ORT runtimes). Raises
    :class:`NoFeasibleCandidate` (after writing the front) when nothing is within ``max_drop``.
    """
    import torch

    from ..data import calibration_set, load_dataset
    from ..models import load
    from .evaluate import RecipeEvaluator
    from .pareto import write_front

    _check_args(objective, max_drop, budget)
    say = progress or (lambda msg: _log.info(msg))
    space = space if isinstance(space, SearchSpace) else read_space(space)  # OrderError names both steps
    first_rung_size(len(space.candidates()), budget, len(space.fidelities), space.eta)  # budget too small: say so now
    out = Path(out)
    _check_out(out)
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    say(f"loading {model} and {data}")
    baseline = load(model, arch=arch).eval()
    val = load_dataset(data, "val", model=baseline)
    test = load_dataset(data, "test", model=baseline)
    calib = calibration_set(load_dataset(data, "train", model=baseline), calib_n, seed=seed)
    header = {"model": str(model), "data": str(data), "model_fingerprint": model_fingerprint(baseline)}
    header |= {"data_fingerprint": data_fingerprint(val), "objective": objective, "max_drop": max_drop}
    log = SearchLog.open(out / LOG_NAME, {**header, "budget": budget, "space": space.raw})
    make = evaluator_factory or RecipeEvaluator
    evaluator = make(baseline, val, calib, data, objective=objective, batch_size=space.batch_size)
    candidates = space.candidates()
    say(f"{len(candidates)} candidates, {len(log.entries)} evaluations already logged")

    def on_eval(cand, rung, m):
        say(f"rung {rung} {cand.label}: drop {m['drop_pt']:+.2f} pt, speed-up {m['speedup']:.2f}×")

    halving = dict(fidelities=space.fidelities, eta=space.eta, budget=budget, objective=objective, max_drop=max_drop)
    forget = getattr(evaluator, "forget", None)
    result = search(candidates, evaluator, log, **halving, seed=seed, on_eval=on_eval, on_rung=forget)
    summary = _summary(model, data, objective, max_drop, budget, space, len(candidates), result)
    result.front = write_front(out, result.rows, objective, max_drop, summary)
    if result.best is None:
        result.seconds = time.perf_counter() - t0
        raise NoFeasibleCandidate(
            f"no candidate is within --max-drop {max_drop:g} pt at full fidelity; closest: "
            + ", ".join(f"{r['label']} ({r['drop_pt']:+.2f} pt)" for r in result.closest[:3]),
            result.closest,
        )
    recipe = {"model": str(model), "arch": arch, "name": f"search-best-{objective}"}
    calib_spec = {"data": data, "split": "train", "n": calib_n, "seed": seed}
    _write_best(out / "best", evaluator, result, test, summary, say, space, recipe, calib_spec)
    result.seconds = time.perf_counter() - t0
    return result


def _summary(
    model: str, data: str, objective: str, max_drop: float, budget: int, space: SearchSpace, n: int, result
) -> dict[str, Any]:
    """The search's settings and counts, as written beside the front and into the best artifact's report."""
    note = (
        f"Model `{model}`, data `{data}` (selection on val; best reported on test), objective **{objective}**, "
        f"max drop {max_drop:g} pt, budget {budget} evaluations; successive halving (eta {space.eta}) over rungs "
        f"{[(f.images, f.repeats) for f in space.fidelities]} (val images, timing repeats). Speed-ups are against "
        f"the original model in PyTorch eager fp32, interleaved in the same process."
    )
    return {
        "model": str(model),
        "data": str(data),
        "objective": objective,
        "max_drop": max_drop,
        "budget": budget,
        "candidates_in_space": n,
        "evaluations_new": result.evaluations,
        "evaluations_logged": result.logged,
        "note": note,
    }


def _check_args(objective: str, max_drop: float, budget: int) -> None:
    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    if not max_drop >= 0:
        raise ConfigError(f"--max-drop must be >= 0 top-1 points, got {max_drop}")
    if budget < 1:
        raise ConfigError(f"--budget must be a positive number of evaluations, got {budget}")


def _write_best(
    dst: Path, evaluator, result: SearchOutcome, test, summary: dict, say, space: SearchSpace, recipe: dict, calib: dict
) -> None:
    """Measure the chosen candidate on the test split (``result.test``) and save it as an artifact at ``dst``
    (``recipe``: model, arch and name of the artifact's recipe; ``calib``: its calib section), with the deployed
    ONNX file for ORT runtimes."""
    from .._io import atomic_write_bytes
    from ..artifact import save_artifact
    from .evaluate import resolved_steps

    best_cand = next(c for c, _ in result.history[-1] if c.cid == result.best["cid"])
    say(f"best: {best_cand.label}; measuring it on the test split")
    full = Fidelity(len(test), space.fidelities[-1].repeats)
    result.test = evaluator(best_cand, full, data=test)
    torch_model, runner, _, _ = evaluator.build(best_cand)
    data = calib["data"]
    recipe = {**recipe, "steps": resolved_steps(best_cand, data), "eval": {"data": data, "split": "test"}}
    recipe["calib"] = calib
    report = {
        "search": {**summary, "best": result.best, "deploy": best_cand.deploy},
        "variants": [
            {"name": "original", "top1": result.test["base_top1"], "throughput": result.test["base_throughput"]},
            {"name": best_cand.label, **{k: result.test[k] for k in ("top1", "agreement", "speedup", "throughput")}},
        ],
        "test": result.test,
    }
    best_dir = save_artifact(torch_model, recipe, report, dst, title=f"vitkit search best: {best_cand.label}")
    if runner is not torch_model:
        name = "model.int8.onnx" if best_cand.deploy == "ort_int8" else "model.onnx"
        atomic_write_bytes(best_dir / name, Path(runner.path).read_bytes())
