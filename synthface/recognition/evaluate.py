"""A whole ``synthface evaluate`` run: train one recognizer per training set with the same recipe,
verify each on every benchmark, write the report.

Under ``accelerate launch`` every process trains; process 0 writes config.yaml, tests the trained
recognizers and writes the report (:mod:`synthface.recognition.report`), and the others return an
empty report. ``bench_only`` re-tests a trained ``recognizer.pt`` with no training.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from synthface.config import EvaluateRecipe, config_dict, config_hash, write_resolved
from synthface.dataset.combined import check_parts
from synthface.dataset.locks import output_lock
from synthface.errors import InputError
from synthface.output_folder import check_output_folder
from synthface.runtime import Progress


def _check_inputs(trains: dict[str, str], benches: dict[str, str], people: dict[str, str], bench_only: Path | None) -> None:
    if not benches:
        raise InputError("give at least one --bench NAME=PAIRS.txt:IMAGES_DIR or NAME=FILE.bin")
    if bench_only is None and not trains:
        raise InputError("give at least one --train NAME=PATH (or --bench-only CHECKPOINT to re-test a recognizer)")
    if bench_only is not None and trains:
        raise InputError("--bench-only re-tests a trained recognizer: drop the --train options")
    unknown = sorted(set(people) - set(trains))
    if unknown:
        raise InputError(f"--people names {', '.join(unknown)} match no --train name")
    for name, spec in trains.items():
        check_parts(name, spec)


def evaluate_training_sets(
    config: EvaluateRecipe,
    trains: dict[str, str],
    benches: dict[str, str],
    people: dict[str, str],
    out: Path,
    resume: bool = False,
    bench_only: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train on each of ``trains`` (name -> path; ``people``: name -> people list) and verify on each
    of ``benches`` (name -> spec); a path may be several joined by ``+``, read as one set with
    disjoint labels (:mod:`synthface.dataset.combined`; its parts are in ``training[name]["parts"]``). Every
    training set is opened, and so checked, before anything is written. Returns the report (plus the paths of report.md and report.json),
    empty on every process but the main one."""
    from accelerate import PartialState

    _check_inputs(trains, benches, people, bench_only)
    check_output_folder(out, "evaluate", "config.yaml", EvaluateRecipe)
    state = PartialState()
    # process 0 holds --out's lock for the whole run (another command writing it is refused); a
    # folder created for a run that fails before writing anything is removed again
    with output_lock(out) if state.is_main_process else contextlib.nullcontext():
        return _evaluate(config, trains, benches, people, out, resume, bench_only, progress, state)


def _evaluate(config, trains, benches, people, out, resume, bench_only, progress, state):  # type: ignore[no-untyped-def]
    from synthface.dataset.combined import CombinedFaces, open_training_spec
    from synthface.dataset.reader import read_people
    from synthface.recognition.benchmarks import evaluate_benchmark, load_benchmark
    from synthface.recognition.report import write_report
    from synthface.recognition.train import input_size_of, load_recognizer, train_recognizer
    from synthface.runtime import resolve_device

    runs = out / "runs"
    if bench_only is None and not resume:
        busy = [n for n in trains if (runs / n / "checkpoint.pt").exists()]
        if busy:
            raise InputError(f"{out} already holds training runs ({', '.join(busy)}): pass --resume or choose a new --out")
    size = input_size_of(config)
    datasets = {
        name: open_training_spec(
            name,
            spec,
            size=size,
            min_images=config.train.min_images,
            people=read_people(people[name]) if name in people else None,
        )
        for name, spec in (trains.items() if bench_only is None else ())
    }
    device = resolve_device(config.train.device)
    b = config.bench
    loaded = {
        name: load_benchmark(
            name,
            spec,
            aligned=b.aligned,
            folds=b.folds,
            batch_size=b.batch_size,
            device=str(device),
            progress=progress,
            seed=config.seed,
            pairs_per_fold=b.pairs_per_fold,
        )
        for name, spec in benches.items()
    }
    if state.is_main_process:  # once every input has loaded: a failed start leaves --out as it was
        write_resolved(config, out)

    def test(backbone: Any, size: int) -> dict[str, Any]:
        return {
            name: evaluate_benchmark(
                backbone, bench, input_size=size, batch_size=b.batch_size, flip=b.flip, far=b.far, device=device
            )
            for name, bench in loaded.items()
        }

    results: dict[str, dict] = {}
    training: dict[str, dict] = {}
    histories: dict[str, list[dict]] = {}
    if bench_only is not None:
        backbone, meta = load_recognizer(bench_only, device)
        name = str(meta.get("meta", {}).get("name") or "recognizer")
        results[name] = test(backbone, int(meta["input_size"]))
        training[name] = {"recognizer": str(bench_only), **meta.get("meta", {})}
    else:
        for name, dataset in datasets.items():
            result = train_recognizer(dataset, config, runs / name, name=name, resume=resume, progress=progress)
            training[name] = {"path": trains[name], **result.summary()}
            if isinstance(dataset, CombinedFaces):
                training[name]["parts"] = dataset.composition()
            histories[name] = result.history
            if state.is_main_process:
                backbone, _ = load_recognizer(result.recognizer, device)
                results[name] = test(backbone, size)
    report: dict[str, Any] = {}
    if state.is_main_process:
        extra = {
            "recipe": config_dict(config),
            "config_hash": config_hash(config),
            "bench_inputs": {n: bench.describe() for n, bench in loaded.items()},
        }
        report = write_report(out, results, training, histories, extra)
        report["report_md"] = str(out / "report.md")
        report["report_json"] = str(out / "report.json")
    state.wait_for_everyone()
    return report
