"""A whole `synthface generate` run: plan identities, render each shard, select, write; resumable.

Stages per shard: render (the sampling loop, batch by batch) -> select (per identity: the seam
where filtering plugs in; with filtering off every sample is kept as generated) -> encode + write
(Parquet shard, then its commit marker). Under ``accelerate launch`` every process runs this
function: process 0 locks the output directory, checks/writes config.yaml and computes the
identity plan, the others receive its verdict and plan through a broadcast, each process writes
its own shards (s % W == rank), and after a barrier process 0 writes identities.parquet and
summary.json.

Parts (``part="I/N"``, e.g. the jobs of a Slurm array): a part job renders only the shards s with
s % N == I (its processes split them as above) and skips the final pass; part jobs share --out (see
``PartLock``), each writes config.yaml if absent (else checks it) and computes the identity plan
itself. A plain run afterwards finds every shard committed and does the final pass.

Resume: a shard whose marker matches its Parquet checksum and the config hash is skipped; the
config hash covers the whole recipe except ``RESUME_FREE_KEYS`` (settings that cannot change an
image, so a resumed run may change them).
"""

from __future__ import annotations

import copy
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from synthface.config import GenerateRecipe, VariationSection, config_dict, config_hash, diff_keys, read_resolved, write_resolved
from synthface.dataset.plan import Job, Shard, make_shards, plan_labels, shard_jobs, shards_for_process
from synthface.dataset.writer import (
    IMAGE_EXT,
    LOCK_NAME,
    SHARD_FILES,
    RunLock,
    ShardRows,
    atomic_write_bytes,
    atomic_write_json,
    clean_temp,
    encode_image,
    read_marker,
    shard_done,
    shard_paths,
    table_bytes,
    write_shard,
)
from synthface.errors import ConfigError, InputError, SynthfaceError
from synthface.generator.families import check_model, load_model
from synthface.generator.fastpath import apply_fast_path
from synthface.generator.overlap import Stage, make_stage
from synthface.generator.pipeline import GeneratorModel, generate, sample_batch, to_uint8
from synthface.generator.variation import StyleBank, draw
from synthface.output_folder import check_output_folder
from synthface.identities import FaceEmbedding, IdentityPlan, plan_identities, read_plan, read_plan_metadata
from synthface.runtime import Progress, progress_or_null, resolve_dtype

RESUME_FREE_KEYS = ("sampling.batch_size", "sampling.overlap")
_DEFAULT_VARIATION = VariationSection().model_dump(mode="json")
IDENTITIES_FILE = "identities.parquet"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
INPUTS_FILE = "inputs.json"


# --------------------------------------------------------------------------- the selection seam


@dataclass
class Candidate:
    """One rendered sample."""

    identity: int
    sample: int
    seed: int
    image: np.ndarray  # HxWx3 uint8, as generated
    variation: tuple[float, float, int] | None = None  # (cosine, guidance, style) drawn for it, when drawn


@dataclass
class Selected:
    """A sample kept for the dataset, with the image to store and its scores (NaN: not measured)."""

    candidate: Candidate
    image: np.ndarray
    id_score: float = float("nan")
    det_score: float = float("nan")


class Selector(Protocol):
    """Chooses which rendered samples of one identity go into the dataset.

    ``candidates_per_identity(M)`` says how many samples to render per identity (oversampling);
    ``select(identity, candidates)`` returns the kept ones (an empty list drops the identity).
    """

    def candidates_per_identity(self, images_per_identity: int) -> int: ...

    def select(self, identity: int, candidates: list[Candidate]) -> list[Selected]: ...


class KeepAll:
    """Selection with filtering off: every sample, as generated, resized to ``output.image_size``."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def candidates_per_identity(self, images_per_identity: int) -> int:
        return images_per_identity

    def select(self, identity: int, candidates: list[Candidate]) -> list[Selected]:
        return [Selected(c, resize(c.image, self.image_size)) for c in candidates]


class AlignAll:
    """Selection with filtering off for models whose faces sit anywhere (``template_scale`` None, e.g. Arc2Face).

    Every sample is kept: its face is detected (MTCNN) and warped to the ``output.image_size``
    ArcFace template, with the detector's score as ``det_score``; an image where no face is found
    is kept resized whole, with ``det_score`` 0.
    """

    def __init__(self, image_size: int, device: str = "auto") -> None:
        self.image_size = image_size
        self.device = device
        self._detector: Any = None

    def candidates_per_identity(self, images_per_identity: int) -> int:
        return images_per_identity

    def select(self, identity: int, candidates: list[Candidate]) -> list[Selected]:
        from synthface.faces.align import FaceDetector, warp_face

        if self._detector is None:
            self._detector = FaceDetector(device=self.device)
        faces = self._detector.detect([c.image for c in candidates])
        out = []
        for c, face in zip(candidates, faces):
            if face is None:
                out.append(Selected(c, resize(c.image, self.image_size), det_score=0.0))
            else:
                out.append(Selected(c, warp_face(c.image, face.landmarks, size=self.image_size), det_score=face.score))
        return out


def resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC), np.uint8)


def make_selector(recipe: GenerateRecipe, model: GeneratorModel, plan: IdentityPlan | None = None) -> Selector:
    """With ``filter.enabled`` false: KeepAll, or AlignAll for models without a known face template;
    else ``synthface.filtering.make_selector(recipe, model, plan)``."""
    if not recipe.filter.enabled:
        if model.template_scale is None:
            return AlignAll(recipe.output.image_size, device=str(model.device))
        return KeepAll(recipe.output.image_size)
    try:
        from synthface import filtering  # type: ignore[attr-defined]
    except ImportError as exc:
        if getattr(exc, "name", None) not in ("synthface.filtering", None):
            raise
        raise ConfigError(
            "filter.enabled=true needs the filtering stage (synthface.filtering), which this installation "
            "lacks: set filter.enabled=false"
        ) from None
    return filtering.make_selector(recipe, model, plan)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- config guard


def resume_guard(config: dict[str, Any]) -> dict[str, Any]:
    """The config minus the keys a resumed run may change (they cannot change an image), and minus the
    variation section while it holds its defaults (so runs started before it existed still resume)."""
    guard = copy.deepcopy(config)
    if guard.get("variation") == _DEFAULT_VARIATION:
        guard.pop("variation")
    for dotted in RESUME_FREE_KEYS:
        node = guard
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return guard


# the files of a run in --out and in data/ (clean_temp removes only temp files of these)
RUN_FILES = re.compile(r"config\.yaml|identities\.parquet|summary\.json|inputs\.json|README\.md")


def _committed_markers(data_dir: Path) -> list[dict[str, Any]]:
    """The readable commit markers in ``data_dir`` (whatever config wrote them)."""
    markers = [read_marker(m) for m in sorted(data_dir.glob(".train-*.json")) if SHARD_FILES.fullmatch(m.name)]
    return [m for m in markers if m is not None]


def _reset(out: Path) -> None:
    """Delete this run's files: the shards and filter records its markers name, shard files of its
    naming, identities/summary/inputs/config and its own card. A user's files in --out stay."""
    from synthface.dataset.card import CARD_FILE, is_own_card
    from synthface.filtering import FILTER_DIR

    data_dir, filter_dir = out / "data", out / FILTER_DIR
    doomed: list[Path] = []
    for info in _committed_markers(data_dir):
        record = info.get("filter") if isinstance(info.get("filter"), dict) else {}
        named = [data_dir / str(info.get("file", "")), out / str(record.get("file", ""))]
        doomed += [f for f in named if f.parent in (data_dir, filter_dir) and SHARD_FILES.fullmatch(f.name)]
    for folder in (data_dir, filter_dir):
        if folder.is_dir():
            doomed += [f for f in folder.iterdir() if SHARD_FILES.fullmatch(f.name)]
    doomed += [out / name for name in (IDENTITIES_FILE, SUMMARY_FILE, INPUTS_FILE, CONFIG_FILE)]
    if is_own_card(out / CARD_FILE):
        doomed.append(out / CARD_FILE)
    for path in doomed:
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
    for folder in (data_dir, filter_dir):
        clean_temp(folder, SHARD_FILES)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _prepare_output(
    out: Path,
    recipe: GenerateRecipe,
    guard: dict[str, Any],
    overwrite: bool,
    lock: RunLock | PartLock,
    part: bool,
    inputs: dict[str, Any],
) -> bool:
    """Lock ``out``, check (or reset) what is there, write config.yaml and inputs.json. Returns True
    when resuming. Called only once the model and the identity plan have loaded.

    A folder whose config differs is re-configured when it holds no committed shard (a run that
    failed before rendering), else refused. A part job leaves everything else alone (other parts
    are writing): it writes config.yaml and inputs.json only if absent (else checks them), and
    cleans no temp files (the final plain run does).
    """
    lock.acquire()
    data_dir = out / "data"
    config_path = out / CONFIG_FILE
    # look for shards before config.yaml: a concurrent part job writes config.yaml before its first shard
    has_shards = bool(_committed_markers(data_dir))
    resuming = False
    if overwrite:
        _reset(out)
    elif config_path.exists():
        differing = _config_diff(out, guard)
        if differing and (has_shards or part):
            what = f"{CONFIG_FILE} is unreadable" if differing == ["(unreadable)"] else f"differs in: {', '.join(differing)}"
            raise ConfigError(
                f"{out} was written by a different config ({what}): rerun with the same recipe to resume, "
                "pass --overwrite to start over, or choose another --out"
            )
        if differing:
            _reset(out)  # nothing committed: a run that failed before rendering; take the new config
        else:
            resuming = True
    if resuming and has_shards:
        _check_inputs(out, inputs)
    if part:
        if not resuming and not _create_once(config_path, lambda tmp: write_resolved(recipe, out, tmp)):
            if _config_diff(out, guard):  # another part job wrote it meanwhile
                raise ConfigError(f"another part job started {out} with a different config: use the same recipe for every part")
        if not _create_once(out / INPUTS_FILE, lambda tmp: atomic_write_json(out / tmp, inputs)):
            _check_inputs(out, inputs)
        return resuming
    clean_temp(data_dir, SHARD_FILES)
    clean_temp(out, RUN_FILES)
    (out / SUMMARY_FILE).unlink(missing_ok=True)
    write_resolved(recipe, out, CONFIG_FILE)
    atomic_write_json(out / INPUTS_FILE, inputs)
    return resuming


def _config_diff(out: Path, guard: dict[str, Any]) -> list[str]:
    """Keys where ``out``'s config.yaml differs from this guard (the recipe minus RESUME_FREE_KEYS);
    ``["(unreadable)"]`` when it cannot be read."""
    try:
        previous = read_resolved(out / CONFIG_FILE)
    except Exception:  # noqa: BLE001 - an unreadable config cannot vouch for the shards
        return ["(unreadable)"]
    return diff_keys(resume_guard(previous), guard)


def run_inputs(recipe: GenerateRecipe, model: GeneratorModel, plan: IdentityPlan) -> dict[str, Any]:
    """What a run loaded besides its recipe: the model files' fingerprints (the model folder and any
    local file or folder the arc2face options name) and the identity plan's digest."""
    from synthface.fingerprint import folder_fingerprint

    roots = {"model": model.source}
    roots.update({f"arc2face.{k}": v for k, v in recipe.arc2face.model_dump().items() if v})
    if recipe.variation.style_bank:
        roots["variation.style_bank"] = recipe.variation.style_bank
    files = {name: folder_fingerprint(Path(p)) for name, p in roots.items() if p and Path(p).exists()}
    return {"model_files": files, "identities": plan.digest()}


def _check_inputs(out: Path, inputs: dict[str, Any]) -> None:
    """Refuse to resume when the model files or the identity plan differ from those the run started with."""
    from synthface.fingerprint import changed_files

    before = read_marker(out / INPUTS_FILE)
    if before is None:
        return  # a run from before inputs.json: nothing to compare with
    for root, now in inputs["model_files"].items():
        changed = changed_files(before.get("model_files", {}).get(root, {}), now)
        if changed:
            shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
            raise ConfigError(
                f"the {root} files changed since {out} was started ({shown}): its shards came from the old ones; "
                "restore them (the same model, the same files) to resume, --overwrite to start over, or choose another --out"
            )
    if before.get("identities") != inputs["identities"]:
        raise ConfigError(
            f"the identity plan differs from the one {out} was started with (identities.parquet or the gallery/images "
            "it was planned from changed): restore them, pass --overwrite to start over, or choose another --out"
        )


def _create_once(path: Path, write: Callable[[str], Any]) -> bool:
    """Create ``path`` unless it exists; False if it did. ``write(name)`` writes the complete file
    as ``name`` in the same folder; a hard link then publishes it atomically, so concurrent part
    jobs see all of it or none and exactly one of them creates it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    write(tmp.name)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- parts (job arrays)


def parse_part(text: str) -> tuple[int, int]:
    """``"I/N"`` (0-based part I of N) -> (I, N); InputError for anything else."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if match is None:
        raise InputError(f"--part must be I/N (part I of N, counted from 0, e.g. 0/8), got '{text}'")
    index, parts = int(match[1]), int(match[2])
    if parts < 1 or index >= parts:
        raise InputError(f"--part {text}: needs N >= 1 and 0 <= I < N (parts are numbered 0 to N-1)")
    return index, parts


class PartLock:
    """Part I/N's hold on --out: ``.synthface.part-I-of-N.lock`` exclusively (one job per part) and
    the run lock ``.synthface.lock`` shared, so part jobs run side by side while a plain run (which
    takes the run lock exclusively) cannot run beside them. The OS releases both if the holder dies;
    on a filesystem without flock support the part jobs go on unguarded."""

    def __init__(self, out: Path, index: int, parts: int) -> None:
        import fcntl

        self.out = out
        self.locks = [
            (out / LOCK_NAME, fcntl.LOCK_SH, "a synthface run without --part is writing to"),
            (out / f".synthface.part-{index}-of-{parts}.lock", fcntl.LOCK_EX, f"another job is writing part {index}/{parts} to"),
        ]
        self.fds: list[int] = []

    def acquire(self) -> None:
        import fcntl

        self.out.mkdir(parents=True, exist_ok=True)
        for path, mode, who in self.locks:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self.release()
                raise InputError(f"{who} {self.out} (lock {path} is held): wait for it to finish or choose another --out") from None
            except OSError:  # no flock here
                os.close(fd)
                continue
            self.fds.append(fd)

    def release(self) -> None:
        while self.fds:
            os.close(self.fds.pop())


# --------------------------------------------------------------------------- process coordination


def process_state() -> Any:
    """accelerate's PartialState: rank, world size, device; CPU processes get the gloo backend.

    ``accelerate launch --multi_gpu``/``torchrun`` on a machine without GPUs would otherwise leave
    every process believing it is alone (process 0 of 1).
    """
    import os

    import torch
    from accelerate import PartialState

    distributed = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 or int(os.environ.get("LOCAL_RANK", "-1") or -1) >= 0
    flag = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return PartialState(cpu=flag or (distributed and not torch.cuda.is_available()))


def _on_main(state: Any, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on process 0 and hand its result (or its error) to every process."""
    result, error = None, None
    if state.is_main_process:
        try:
            result = fn()
        except SynthfaceError as exc:
            error = exc
        except BaseException as exc:
            if state.num_processes > 1:
                _broadcast(state, [None, SynthfaceError(f"process 0 failed: {type(exc).__name__}: {exc}")])
            raise
    if state.num_processes > 1:
        result, error = _broadcast(state, [result, error])
    if error is not None:
        raise error
    return result


def _broadcast(state: Any, box: list[Any]) -> list[Any]:
    from accelerate.utils import broadcast_object_list

    return list(broadcast_object_list(box, from_process=0))


def _gather(state: Any, obj: Any) -> list[Any]:
    if state.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return list(gather_object([obj]))


# --------------------------------------------------------------------------- identities


def _with_model_gallery(cfg: Any, model: GeneratorModel) -> Any:
    """The gallery strategy without a named gallery uses the one a trained native model carries."""
    from synthface.generator.native import GALLERY_FILE

    own = Path(model.source) / GALLERY_FILE if model.source else None
    if cfg.strategy == "gallery" and not cfg.gallery and own is not None and own.is_file():
        return cfg.model_copy(update={"gallery": str(own)})
    return cfg


def _with_model_leakage_gallery(recipe: GenerateRecipe, model: GeneratorModel) -> GenerateRecipe:
    """The filter's leakage check against the gallery a native model carries, when identities come from it.

    Only when the filter embeds with the model's conditioning embedder (the gallery's space); with
    another filter embedder, ``filter.gallery`` names a gallery in that embedder's space.
    """
    identities = _with_model_gallery(recipe.identities, model)
    if identities is recipe.identities or recipe.filter.gallery or recipe.filter.embedder != model.embedder:
        return recipe
    return recipe.model_copy(update={"identities": identities})


def _identity_plan(
    recipe: GenerateRecipe, model: GeneratorModel, out: Path, guard_hash: str, device: Any, reuse: bool = True
) -> IdentityPlan:
    """Process 0: reuse identities.parquet of this config when ``reuse`` and it is intact, else plan.
    Writes nothing (the plan is written once the output folder is prepared)."""
    path = out / IDENTITIES_FILE
    if reuse and path.is_file() and read_plan_metadata(path).get("config_hash") == guard_hash:
        stored = read_plan(path)
        if stored is not None:
            return stored
        # damaged or edited: plan again; resuming then compares the new plan's digest with inputs.json

    def image_embed() -> Any:
        from synthface.faces.align import FaceDetector
        from synthface.faces.embedders import get_embedder

        return FaceEmbedding(get_embedder(model.embedder, device=str(device)), detector=FaceDetector(device=str(device)))

    def generated_embed() -> Any:
        if model.template_scale is None:
            return image_embed()
        from synthface.faces.embedders import get_embedder

        return FaceEmbedding(get_embedder(model.embedder, device=str(device)), template_scale=model.template_scale)

    s = recipe.sampling

    def render_unconditional(seeds: np.ndarray) -> Sequence[np.ndarray]:
        return list(generate(model, None, seeds, batch_size=s.batch_size, scheduler=s.scheduler, steps=s.steps,
                             guidance_scale=1.0, unconditional=True))  # fmt: skip

    return plan_identities(
        _with_model_gallery(recipe.identities, model),
        recipe.seed,
        model.embedding_dim,
        embedder=model.embedder,
        image_embed=image_embed,
        generated_embed=generated_embed,
        render_unconditional=render_unconditional,
    )


def identity_guide_for(model: GeneratorModel, device: Any) -> Any:
    """The differentiable module identity guidance needs: the conditioning embedder's ``differentiable()``."""
    from synthface.faces.embedders import get_embedder

    embedder = get_embedder(model.embedder, device=str(device))
    make = getattr(embedder, "differentiable", None)
    if make is None:
        raise ConfigError(
            f"sampling.identity_scale > 0 needs a differentiable '{model.embedder}' embedder and this one is not: "
            "set sampling.identity_scale=0"
        )
    import inspect

    # embedders whose guide warps the generated crop to their own template (sface) take its geometry
    params = inspect.signature(make).parameters
    if model.template_scale is not None and "template_scale" in params and "image_size" in params:
        return make(image_size=model.image_size, template_scale=model.template_scale)
    return make()


# --------------------------------------------------------------------------- the run


def generate_dataset(
    recipe: GenerateRecipe,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    identity_guide: Any = None,
    profile: bool = False,
    state: Any = None,
    part: str | None = None,
) -> dict[str, Any]:
    """Generate (or resume) the dataset of ``recipe`` into ``out``; returns the run summary.

    Every process of an ``accelerate launch`` calls this; only process 0's summary covers the
    whole dataset. ``profile`` adds per-stage timings of the sampling loop (condition, unet,
    scheduler, decode) to the summary (it synchronises the GPU, so it is off by default).
    ``part="I/N"`` renders only the shards s with s % N == I and skips the final pass; process 0
    then returns a part summary (``part``, ``part_shards``: that many committed, ``shards``, ...).
    """
    index, parts = parse_part(part) if part is not None else (0, 1)
    if part is not None and overwrite:
        raise InputError(
            "--overwrite cannot be combined with --part (it would delete the other parts' shards): "
            "delete --out, or run once with --overwrite and no --part"
        )
    state = state or process_state()
    out = Path(out)
    progress = progress_or_null(progress)
    resolved = config_dict(recipe)
    guard = resume_guard(resolved)
    guard_hash = config_hash(guard)
    data_dir = out / "data"
    lock: RunLock | PartLock | None = None
    timings: dict[str, float] = {}
    started = time.perf_counter()
    try:
        # every input is checked before --out is created or changed: the folder, the model, the plan
        _on_main(state, lambda: check_output_folder(out, "generate", CONFIG_FILE, GenerateRecipe))

        def finished() -> dict[str, Any] | None:
            nonlocal lock
            done = None if overwrite or part is not None else finished_summary(out, recipe, guard_hash)
            if done is None:
                return None
            lock = RunLock(out)  # no other run may be writing the folder whose summary is rewritten
            lock.acquire()
            done.update({"resumed": True, "shards_written": 0, "shards_skipped": done["shards"], "images_rendered": 0,
                         "images_per_second": None, "seconds": time.perf_counter() - started})  # fmt: skip
            if isinstance(done.get("filter"), dict):
                done["filter"]["shards_relabelled"] = 0  # the final pass did not run again
            atomic_write_json(out / SUMMARY_FILE, done)
            return done

        done = _on_main(state, finished)  # every shard and the final pass are there: nothing to render, no model to load
        if done is not None:
            return done if state.is_main_process else {"rank": state.process_index, "shards_written": 0}
        device = state.device
        dtype = resolve_dtype(recipe.sampling.dtype, device)
        tick = time.perf_counter()
        model = load_model(recipe.model, device, dtype, options={"arc2face": recipe.arc2face.model_dump()})
        check_model(model, embedder=recipe.identities.embedder)
        s = recipe.sampling
        apply_fast_path(model, channels_last=s.channels_last, compile=s.compile, vae_tiling=s.vae_tiling)
        timings["load"] = time.perf_counter() - tick
        tick = time.perf_counter()
        plan: IdentityPlan = _on_main(state, lambda: _identity_plan(recipe, model, out, guard_hash, device, not overwrite))
        check_model(model, dim=plan.dim)
        timings["plan"] = time.perf_counter() - tick
        guide = identity_guide
        if recipe.sampling.identity_scale > 0 and guide is None:
            guide = identity_guide_for(model, device)
        # the recipe as written stays the run's config (resume compares it); only the filter sees the model's gallery
        selector = make_selector(_with_model_leakage_gallery(recipe, model), model, plan)
        bank = StyleBank(recipe.variation.style_bank, model.image_size) if recipe.variation.style_bank else None

        def prepare() -> bool:
            nonlocal lock
            lock = RunLock(out) if part is None else PartLock(out, index, parts)
            resuming = _prepare_output(out, recipe, guard, overwrite, lock, part is not None, run_inputs(recipe, model, plan))
            if part is None:
                atomic_write_bytes(out / IDENTITIES_FILE, table_bytes(plan.to_table({"config_hash": guard_hash})))
            return resuming

        resuming = _on_main(state, prepare)

        shards = make_shards(len(plan), recipe.shard_identities)
        ours = shards_for_process(shards, index, parts)  # this part's shards: all of them without --part
        mine = ours[state.process_index :: state.num_processes]
        tick = time.perf_counter()
        todo = [s for s in mine if shard_done(data_dir, s, guard_hash) is None]
        timings["verify"] = time.perf_counter() - tick
        per_identity = selector.candidates_per_identity(recipe.images_per_identity)
        writer = _ShardRenderer(recipe, model, plan, selector, guide, timings if profile else None, bank)
        total = sum(int(plan.kept[s.start : s.stop].sum()) for s in todo) * per_identity
        progress.start(total, "generating")
        rendered = 0
        render_start = time.perf_counter()

        def advance(n: int) -> None:
            nonlocal rendered
            rendered += n
            elapsed = max(time.perf_counter() - render_start, 1e-9)
            progress.advance(n, ips=rendered / elapsed, accepted=writer.kept)

        def commit(shard: Shard, rows: ShardRows) -> None:
            tick = time.perf_counter()
            # a selector's per-shard record (filtering) is written before the shard and noted in its marker
            shard_extra = getattr(selector, "shard_extra", None)
            write_shard(data_dir, shard, rows, guard_hash, shard_extra(out, shard) if shard_extra else None)
            writer.add("write", time.perf_counter() - tick)
            writer.rows_written += len(rows)

        # sampling here; selection, encoding and writing in order, behind it when sampling.overlap is on (overlap.py)
        with make_stage(recipe.sampling.overlap) as stage:
            for shard in todo:
                stage.submit(commit, shard, writer.render(shard_jobs(shard, plan, recipe.seed, per_identity), advance, stage))
        render_seconds = time.perf_counter() - render_start
        progress.finish()
        for key, value in writer.timings.items():
            timings[key] = timings.get(key, 0.0) + value
        mine_stats = {
            "rank": state.process_index,
            "shards_written": len(todo),
            "shards_skipped": len(mine) - len(todo),
            "images_rendered": rendered,
            "rows_written": writer.rows_written,
            "seconds": render_seconds,
            "timings": timings,
        }
        state.wait_for_everyone()
        per_process = _gather(state, mine_stats)
        summary: dict[str, Any] = {}
        if state.is_main_process and part is not None:
            summary = _part_summary(out, f"{index}/{parts}", ours, shards, guard_hash, per_process)
        elif state.is_main_process:
            summary = _finish(out, recipe, model, plan, shards, guard_hash, per_process, resuming, started, selector)
        state.wait_for_everyone()
        return summary if state.is_main_process else mine_stats
    finally:
        if lock is not None:
            lock.release()


def finished_summary(out: Path, recipe: GenerateRecipe, guard_hash: str) -> dict[str, Any] | None:
    """The summary of a finished run of this config in ``out`` (every shard committed, identities and
    card written), or None when anything is left to do."""
    summary = read_marker(out / SUMMARY_FILE)
    if summary is None or summary.get("config_hash") != guard_hash or "identities_planned" not in summary:
        return None
    from synthface.dataset.card import CARD_FILE

    if not (out / CARD_FILE).is_file() or read_plan_metadata(out / IDENTITIES_FILE).get("config_hash") != guard_hash:
        return None
    shards = make_shards(int(summary["identities_planned"]), recipe.shard_identities)
    if len(shards) != summary.get("shards") or any(shard_done(out / "data", s, guard_hash) is None for s in shards):
        return None
    return summary


class _ShardRenderer:
    """Renders a shard's jobs batch by batch, selects per identity, encodes the kept images."""

    def __init__(
        self,
        recipe: GenerateRecipe,
        model: GeneratorModel,
        plan: IdentityPlan,
        selector: Selector,
        guide: Any,
        profile: dict[str, float] | None,
        bank: StyleBank | None = None,
    ) -> None:
        self.recipe, self.model, self.selector, self.guide, self.bank = recipe, model, selector, guide, bank
        self.embeddings = plan.embeddings
        # With every identity kept, label == plan rank among kept identities. A filter that drops
        # identities after rendering records them per shard (marker "identities_kept"); making the
        # labels contiguous again is then a relabel pass over the markers once all shards exist.
        self.labels = plan_labels(plan.kept)
        self.profile = profile
        self.timings: dict[str, float] = {}
        self.fmt = recipe.output.image_format
        self.kept = 0  # images selected so far (the progress display)
        self.rows_written = 0
        self._lock = threading.Lock()  # timings are added from the sampling and the writing thread

    def add(self, part: str, seconds: float) -> None:
        with self._lock:
            self.timings[part] = self.timings.get(part, 0.0) + seconds

    def render(self, jobs: list[Job], advance: Callable[[int], None], stage: Stage) -> ShardRows:
        """Sample the shard's jobs batch by batch; each batch's selection and encoding go to ``stage``.

        Returns the shard's rows, complete once ``stage`` has run every task submitted here."""
        s, v = self.recipe.sampling, self.recipe.variation
        rows = ShardRows(with_full=self.recipe.output.store_full_resolution, with_variation=v.active)
        pending: dict[int, list[Candidate]] = {}
        remaining: dict[int, int] = {}
        for job in jobs:
            remaining[job.identity] = remaining.get(job.identity, 0) + 1
        for start in range(0, len(jobs), s.batch_size):
            batch = jobs[start : start + s.batch_size]
            ids = [j.identity for j in batch]
            seeds = [j.seed for j in batch]
            tick = time.perf_counter()
            draws = draw(v, self.embeddings[ids], seeds, s.guidance_scale, len(self.bank) if self.bank else 0) if v.active else None
            images = to_uint8(
                sample_batch(
                    self.model,
                    self.embeddings[ids] if draws is None else draws.embeddings,
                    seeds,
                    scheduler=s.scheduler,
                    steps=s.steps,
                    guidance_scale=s.guidance_scale if draws is None else draws.guidance_scale,
                    identity_scale=s.identity_scale,
                    identity_guide=self.guide,
                    init_images=None if draws is None or self.bank is None else self.bank.batch(draws.style),
                    strength=v.style_strength,
                    timings=self.profile,
                )
            )
            self.add("render", time.perf_counter() - tick)
            stage.submit(self._collect, batch, images, draws, pending, remaining, rows)
            advance(len(batch))
        return rows

    def _collect(self, batch: list[Job], images: np.ndarray, draws: Any, pending: dict[int, list[Candidate]],
                 remaining: dict[int, int], rows: ShardRows) -> None:  # fmt: skip
        """One batch's candidates; each identity whose candidates are all rendered is selected and encoded."""
        for k, (job, image) in enumerate(zip(batch, images)):
            drawn = None if draws is None else (float(draws.cosine[k]), float(draws.guidance[k]), int(draws.style[k]))
            pending.setdefault(job.identity, []).append(Candidate(job.identity, job.sample, job.seed, image, drawn))
            remaining[job.identity] -= 1
            if remaining[job.identity] == 0:
                self._emit(job.identity, pending.pop(job.identity), rows)

    def _emit(self, identity: int, candidates: list[Candidate], rows: ShardRows) -> None:
        tick = time.perf_counter()
        selected = self.selector.select(identity, candidates)
        self.add("select", time.perf_counter() - tick)
        tick = time.perf_counter()
        ext = IMAGE_EXT[self.fmt]
        for sel in selected:
            c = sel.candidate
            rows.add(
                encode_image(sel.image, self.fmt),
                f"{c.identity:07d}/{c.sample:04d}.{ext}",
                int(self.labels[c.identity]),
                c.identity,
                c.sample,
                c.seed,
                sel.id_score,
                sel.det_score,
                image_full=encode_image(c.image, self.fmt) if self.recipe.output.store_full_resolution else None,
                variation=c.variation,
            )
        self.kept += len(selected)
        self.add("encode", time.perf_counter() - tick)


def _part_summary(
    out: Path, part: str, ours: list[Shard], shards: list[Shard], guard_hash: str, per_process: list[dict[str, Any]]
) -> dict[str, Any]:
    """Process 0 of a part job after the barrier: its shards are all committed (a failure raised)."""
    return {
        "out": str(out),
        "part": part,
        "part_shards": len(ours),
        "shards": len(shards),
        "shards_written": sum(p["shards_written"] for p in per_process),
        "shards_skipped": sum(p["shards_skipped"] for p in per_process),
        "processes": len(per_process),
        "images_rendered": sum(p["images_rendered"] for p in per_process),
        "rows_written": sum(p["rows_written"] for p in per_process),
        "seconds": max((p["seconds"] for p in per_process), default=0.0),
        "config_hash": guard_hash,
        "timings": per_process[0]["timings"],
    }


def _finish(
    out: Path,
    recipe: GenerateRecipe,
    model: GeneratorModel,
    plan: IdentityPlan,
    shards: list[Shard],
    guard_hash: str,
    per_process: list[dict[str, Any]],
    resuming: bool,
    started: float,
    selector: Any = None,
) -> dict[str, Any]:
    """Process 0 after the barrier: check every marker, write identities.parquet and summary.json."""
    data_dir = out / "data"
    # the selector's final pass over all committed shards (filtering: separation, leakage, contiguous labels)
    final_pass = getattr(selector, "finalize", None)
    report = None
    if final_pass is not None and all(shard_done(data_dir, s, guard_hash) is not None for s in shards):
        report = final_pass(out, plan, shards, guard_hash)
    rows = 0
    present: set[int] = set()
    missing = []
    for shard in shards:
        parquet, marker = shard_paths(data_dir, shard)
        info = read_marker(marker)
        if info is None or info.get("config_hash") != guard_hash or not parquet.is_file() or parquet.stat().st_size != info.get("bytes"):
            missing.append(shard.name)
            continue
        rows += int(info["rows"])
        present.update(int(i) for i in info.get("identities_kept", []))
    if missing:
        raise SynthfaceError(f"{len(missing)} shard(s) are missing after the run (first: {missing[0]}): run the same command again to finish them")
    kept = plan.kept & np.isin(np.arange(len(plan)), sorted(present))
    reasons = [r if r or k else "filter: no sample kept" for r, k in zip(plan.reasons, kept)]
    final = IdentityPlan(plan.strategy, plan.embeddings, kept, reasons, plan.seeds, plan.attempts, plan.sources)
    if report is not None:
        final.reasons = [r or (report.reasons[i] if not k else "") for i, (r, k) in enumerate(zip(final.reasons, kept))]
    table = final.to_table({"config_hash": guard_hash})
    atomic_write_bytes(out / IDENTITIES_FILE, table_bytes(report.extend(table) if report is not None else table))
    rendered = sum(p["images_rendered"] for p in per_process)
    seconds = max((p["seconds"] for p in per_process), default=0.0)
    summary = {
        "out": str(out),
        "model": recipe.model,
        "family": model.family,
        "embedder": model.embedder,
        "identities_planned": len(plan),
        "identities_kept": int(kept.sum()),
        "images": rows,
        "shards": len(shards),
        "shards_written": sum(p["shards_written"] for p in per_process),
        "shards_skipped": sum(p["shards_skipped"] for p in per_process),
        "resumed": bool(resuming),
        "processes": len(per_process),
        "images_rendered": rendered,
        "images_per_second": rendered / seconds if seconds > 0 else None,
        "seconds": time.perf_counter() - started,
        "config_hash": guard_hash,
        # why config.yaml's header hash differs: it covers every key, this one the keys that decide the images
        "config_hash_covers": f"every recipe key but {', '.join(RESUME_FREE_KEYS)} (a resumed run may change them)",
        "config_yaml_hash": config_hash(config_dict(recipe)),
        "timings": per_process[0]["timings"],
        "files": {
            "config": str(out / CONFIG_FILE),
            "identities": str(out / IDENTITIES_FILE),
            "data": str(data_dir),
            "summary": str(out / SUMMARY_FILE),
        },
    }
    if report is not None:
        summary["filter"] = report.summary
    atomic_write_json(out / SUMMARY_FILE, summary)
    from synthface.dataset.card import write_card

    write_card(out, recipe, model, summary)
    return summary
