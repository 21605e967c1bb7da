"""``optimize``: make every candidate, judge it, measure the judged ones in one alternated run, choose by the rule, write.

Resumable like a build cache: DIR/optimize.state.json records, for each artifact, the digest of its inputs (the
model file, the recipe and what it depends on) and of the file made, and for each candidate the digest of what its
verdict depends on (artifact, settings, data, sizes, limits) with the verdict. A rerun reuses what did not change;
the state is rewritten after every finished step, so Ctrl-C keeps what finished. Timing is never reused: every
measured candidate is timed again in the same alternated run, so the figures compare.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._io import atomic_write_text, check_writable, made_folder, sha256_file
from ..errors import RnDeployError
from ..log import Log
from .candidates import (
    ARTIFACT_FILES,
    BACKENDS,
    NOT_JUDGED,
    PRECISIONS,
    Candidate,
    describe_settings,
    made_here,
    open_runner,
    plan,
)
from .judge import Judgement, judge_runner, load_images, make_reference
from .make import MakeOptions, Source, digest, make_artifact, read_source, recipe_inputs
from .measure import measure_all
from .report import CANDIDATE_FIELDS, FORMAT, split_environment, triton_name, write_reports, write_triton
from .select import OBJECTIVES, rule_failures, select

STATE = "optimize.state.json"
STATE_FORMAT = "rn-deploy-optimize-state/1"
NEEDS_FP32 = ("onnx-int8", "tensorrt-rtx-fp16", "tensorrt-fp16")


@dataclass
class OptimizeOptions:
    """What ``rn-deploy optimize`` asks for (see :func:`optimize`)."""

    dataset: str | None = None
    data: str | None = None
    limit: int | None = None
    sizes: tuple[int, ...] = ()  # empty: the recorded size range's ends and the training size
    max_drop: float = 1.0
    p99_ms: float | None = None
    objective: str = "throughput"
    backends: tuple[str, ...] = BACKENDS
    precisions: tuple[str, ...] = PRECISIONS
    batches: tuple[int, ...] = (1, 8, 32)
    rounds: int = 5
    iters: int = 20
    warmup: int = 3
    calib_size: int = 512
    eval_batch: int = 256
    triton_name: str | None = None

    def check(self) -> None:
        if self.objective not in OBJECTIVES:
            raise RnDeployError(f"--objective {self.objective!r}: choose one of {', '.join(OBJECTIVES)}")
        if not (math.isfinite(self.max_drop) and self.max_drop >= 0):
            raise RnDeployError(f"--max-drop {self.max_drop}: must be a finite number of points >= 0")
        if self.p99_ms is not None and not (math.isfinite(self.p99_ms) and self.p99_ms > 0):
            raise RnDeployError(f"--p99-ms {self.p99_ms}: must be a positive number of milliseconds")
        if not self.batches or min(self.batches) < 1 or (self.sizes and min(self.sizes) < 1):
            raise RnDeployError("--batches and --sizes take positive numbers")
        if self.rounds < 1 or self.iters < 1:
            raise RnDeployError("--rounds and --iters must be at least 1")


def default_sizes(config: Any) -> list[int]:
    """The recorded size range's ends and the training size (short side, px)."""
    from ..sizes import size_range

    rng = size_range(config)
    return sorted({rng.lo, rng.hi, min(config.image_size)})


def _load_state(folder: Path) -> dict[str, Any]:
    try:
        state = json.loads((folder / STATE).read_text())
    except (OSError, ValueError):
        state = {}
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        state = {}
    return {"format": STATE_FORMAT, "artifacts": dict(state.get("artifacts") or {}), "judged": dict(state.get("judged") or {})}


def _save_state(folder: Path, state: dict[str, Any]) -> None:
    from ..strictjson import dumps

    atomic_write_text(folder / STATE, dumps(state))


def _make_all(cands: list[Candidate], src: Source, folder: Path, mopts: MakeOptions, state: dict[str, Any],
              say: Log) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Make (or reuse) each artifact the candidates need; returns what was made and why the others were not."""
    recipes = list(dict.fromkeys(c.recipe for c in cands if made_here(c)))
    if any(r in NEEDS_FP32 or src.kind == "onnx" for r in recipes) and "onnx-fp32" not in recipes:
        recipes.insert(0, "onnx-fp32")
    recipes.sort(key=lambda r: r != "onnx-fp32")
    made: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for r in recipes:
        needs = r in NEEDS_FP32 or (src.kind == "onnx" and r != "onnx-fp32")
        if needs and "onnx-fp32" not in made:
            errors[r] = f"not made: the FP32 ONNX it is made from was not ({errors.get('onnx-fp32', 'failed')})"
            continue
        path = folder / ARTIFACT_FILES[r]
        inputs = recipe_inputs(r, src, mopts, made.get("onnx-fp32", {}).get("sha256"))
        old = state["artifacts"].get(r)
        if old and old.get("inputs") == inputs and path.exists() and sha256_file(path) == old.get("sha256"):
            made[r] = {**old, "reused": True}
            say(f"[{r}] make: reused {path.name} (inputs unchanged, digest {inputs[:12]})")
            continue
        say(f"[{r}] make: {path.name}")
        try:
            info = make_artifact(r, src, folder, mopts, lambda s, r=r: say(f"[{r}] {s}"))  # type: ignore[misc]
        except Exception as e:  # noqa: BLE001 - any tool's failure makes a row with its reason, not a crash of the rest
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            errors[r] = f"not made: {msg}"
            say(f"[{r}] make: FAILED: {msg}")
            continue
        made[r] = {"inputs": inputs, "sha256": sha256_file(path), **info, "reused": False}
        state["artifacts"][r] = {k: v for k, v in made[r].items() if k != "reused"}
        _save_state(folder, state)
    return made, errors


def _judge_all(cands: list[Candidate], src: Source, folder: Path, opts: OptimizeOptions, sizes: list[int],
               made: dict[str, dict[str, Any]], state: dict[str, Any], say: Log) -> tuple[dict[str, Judgement], Any]:
    from ..runners import RunnerUnavailable

    images = load_images(src, opts.limit)
    say(f"judge: {len(images)} {src.dataset} images, sizes {', '.join(map(str, sizes))} px; reference: FP32 {src.kind}")
    ref = make_reference(src, images, sizes, opts.eval_batch)
    say(f"judge: reference top-1 {100 * ref.top1:.2f}% at {ref.train_side} px")
    out: dict[str, Judgement] = {}
    for c in cands:
        if c.recipe not in made or not c.judge or (c.blocked and c.blocked != NOT_JUDGED):
            continue
        inputs = digest({"candidate": c.to_dict(), "artifact": made[c.recipe]["sha256"], "source": src.sha256,
                         "dataset": src.dataset, "data": src.data, "limit": opts.limit, "seed": src.seed, "sizes": ref.sizes,
                         "max_drop": opts.max_drop})
        old = state["judged"].get(c.name)
        if old and old.get("inputs") == inputs:
            out[c.name] = Judgement(**old["result"])
            say(f"[{c.name}] judge: reused (inputs unchanged, digest {inputs[:12]})")
            continue
        try:
            with open_runner(c, folder / c.artifact) as runner:
                j = judge_runner(runner, c.precision, src, ref, opts.max_drop, opts.eval_batch)
        except RunnerUnavailable as e:
            j = Judgement(failures=[f"cannot run here: {e}"])
        out[c.name] = j
        say(f"[{c.name}] judge: top-1 {100 * (j.top1 or 0):.2f}%, agreement {100 * (j.agreement or 0):.2f}%: "
            + ("pass" if j.passed else "FAIL: " + "; ".join(j.failures[:3])))
        state["judged"][c.name] = {"inputs": inputs, "result": j.to_dict()}
        _save_state(folder, state)
    return out, ref


def _measure(cands: list[Candidate], src: Source, folder: Path, judged: dict[str, Judgement], ref: Any, opts: OptimizeOptions,
             say: Log) -> tuple[dict[str, Any], dict[str, Any]]:
    from ..preprocess import eval_batch

    ran = [c for c in cands if c.name in judged and judged[c.name].top1 is not None]
    if not ran:
        return {}, {}
    n = max(opts.batches)
    cfg = src.config
    x0 = eval_batch(ref.images.images[: min(n, len(ref.images))], tuple(cfg.image_size), cfg.mean, cfg.std)
    x = x0.repeat(-(-n // len(x0)), 1, 1, 1)[:n]  # real images, repeated up to the largest batch
    with contextlib.ExitStack() as stack:
        runners = {c.name: stack.enter_context(open_runner(c, folder / c.artifact)) for c in ran}
        say(f"measure: {len(runners)} candidates, batches {','.join(map(str, sorted({1, *opts.batches})))}, "
            f"{opts.rounds} rounds x {opts.iters} calls, alternated")
        timings, cond = measure_all(runners, x, opts.batches, rounds=opts.rounds, iters=opts.iters, warmup=opts.warmup, log=say)
    for name, t in timings.items():
        say(f"[{name}] measure: p50 {t.p50_ms:.3f} ms, p99 {t.p99_ms:.3f} ms at batch 1; {t.images_per_s:,.0f} images/s at batch {t.batch}")
    return {k: v.to_dict() for k, v in timings.items()}, cond


def optimize(model: str | Path, out: str | Path, opts: OptimizeOptions, *, log: Log | None = None) -> dict[str, Any]:
    """Make, judge, measure and choose; write DIR/optimize.json, optimize.md, optimize.png and DIR/triton.

    Returns the optimize.json document; ``doc["chosen"]`` is None when no candidate qualifies (the reason says why).
    """
    say = log or (lambda _s: None)
    opts.check()
    folder = Path(out)
    check_writable(folder, folder=True, option="--out")
    src = read_source(Path(model), opts.dataset, opts.data)
    sizes = sorted(set(opts.sizes)) if opts.sizes else default_sizes(src.config)
    cands = plan(opts.backends, opts.precisions)
    if not cands:
        raise RnDeployError(f"--backends {','.join(opts.backends)} --precisions {','.join(opts.precisions)}: no candidate to try")
    say(f"optimize: {src.path} ({src.config.arch}), {len(cands)} candidates: {', '.join(c.name for c in cands)}")
    mopts = MakeOptions(limit=opts.limit, max_drop=opts.max_drop, calib_size=opts.calib_size, sizes=tuple(sizes),
                        max_batch=max(opts.batches))
    with made_folder(folder):
        state = _load_state(folder)
        made, errors = _make_all(cands, src, folder, mopts, state, say)
        judged, ref = _judge_all(cands, src, folder, opts, sizes, made, state, say)
        timings, conditions = _measure(cands, src, folder, judged, ref, opts, say)
        return _finish(cands, src, folder, opts, made, errors, judged, ref, timings, conditions, say)


def _finish(cands: list[Candidate], src: Source, folder: Path, opts: OptimizeOptions, made: dict[str, dict[str, Any]],
            errors: dict[str, str], judged: dict[str, Judgement], ref: Any, timings: dict[str, Any], conditions: dict[str, Any],
            say: Log) -> dict[str, Any]:
    from ..validate import environment

    rows: list[dict[str, Any]] = []
    details: dict[str, dict[str, Any]] = {}
    for c in cands:
        j = judged.get(c.name)
        t = timings.get(c.name) or {}
        info = made.get(c.recipe, {})
        failures = list(j.failures) + list(info.get("failures", [])) if j else []
        if j is None:
            reason = errors.get(c.recipe) or c.blocked or ("not judged: it cannot run here" if c.recipe in made else "not made")
        else:
            reason = "; ".join(failures) or "passed every gate"
        rows.append({"name": c.name, "artifact": c.artifact if c.recipe in made else None, "precision": c.precision,
                     "backend": c.backend, "top1": j.top1 if j else None, "agreement": j.agreement if j else None,
                     "p50_ms": t.get("p50_ms"), "p99_ms": t.get("p99_ms"), "images_per_s": t.get("images_per_s"),
                     "passed": bool(j and not failures), "reason": reason})
        details[c.name] = {"settings": describe_settings(c), "runtime_settings": c.settings, "judged": j is not None,
                           "bytes": info.get("bytes"), "batch": t.get("batch"), "per_batch": t.get("per_batch"),
                           "noise": t.get("noise"), "per_size": j.per_size if j else [], "parity": j.parity if j else None,
                           "notes": info.get("notes", []), "artifact_reused": info.get("reused"),
                           "artifact_sha256": info.get("sha256")}
    table = [{**r, "bytes": details[r["name"]]["bytes"]} for r in rows]
    chosen, why = select(table, fp32_top1=ref.top1, objective=opts.objective, max_drop=opts.max_drop, p99_ms=opts.p99_ms)
    for r in rows:  # the budget is part of passing: say why a candidate that passed the gates is outside it
        extra = rule_failures(r, ref.top1, opts.max_drop, opts.p99_ms) if r["passed"] else []
        if extra:
            r["passed"], r["reason"] = False, "; ".join(extra)
    fp32 = next((r for r in rows if r["name"] == "onnx-fp32" and r["images_per_s"]), None)
    best = next((r for r in rows if r["name"] == chosen), None)
    if best and fp32 and best is not fp32:
        why += f"; {best['images_per_s'] / fp32['images_per_s']:.2f}x the throughput of onnx-fp32"
    say(f"chosen: {why}")
    env = environment()
    machine, versions, date = split_environment(env)
    doc: dict[str, Any] = {
        "format": FORMAT, "model": str(src.path), "source_sha256": src.sha256,
        "candidates": [{k: r[k] for k in CANDIDATE_FIELDS} for r in rows], "chosen": chosen, "reason": why,
        "rule": {"objective": opts.objective, "max_drop": opts.max_drop, "p99_ms": opts.p99_ms,
                 "text": (f"{'highest throughput' if opts.objective == 'throughput' else 'lowest p99 at batch 1'} among candidates "
                          f"that pass every gate, within {opts.max_drop:g} top-1 points of FP32"
                          + (f" and under {opts.p99_ms:g} ms p99" if opts.p99_ms is not None else "") + "; ties: the smaller artifact")},
        "reference": {"top1": ref.top1, "kind": src.kind, "dataset": src.dataset, "data": src.data, "split": None,
                      "limit": opts.limit, "seed": src.seed, "count": len(ref.images), "sizes": ref.sizes},
        "details": details, "measurement": conditions, "machine": machine, "versions": versions, "date": date, "triton": None,
    }
    from ..datasets.sources import default_split

    doc["reference"]["split"] = default_split(src.dataset)
    if chosen is not None:
        c = next(c for c in cands if c.name == chosen)
        doc["triton"] = write_triton(folder / c.artifact, folder / "triton", opts.triton_name or triton_name(src.config.arch),
                                     c.backend, c.settings, log=say)
        say(f"triton: wrote {doc['triton']['folder']}" + (f" ({doc['triton']['settings']})" if doc["triton"]["settings"] else ""))
    files = write_reports(doc, folder)
    say(f"wrote {', '.join(files.values())}")
    return doc
