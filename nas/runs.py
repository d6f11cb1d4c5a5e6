"""Training run folders: `nas train` writes one (model.pt, genome.json, result.json), `nas export`
and `nas train --teacher` read one, named either by its folder or as `STUDY#N`, a trial whose
weights a sweep's final training kept."""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.data import CifarData, load_cifar100
from nas.errors import NasError
from nas.families import build_model
from nas.genome_args import parse_genome
from nas.modules import FlipAverage
from nas.progress import EpochLines
from nas.spaces import Genome
from nas.training import Recipe, default_device, evaluate, predictor, recipe_for, recipe_options, train

CHECKPOINT = "checkpoint.pt"  # a training's state after its last finished epoch, until it ends


def _new_run_dir(genome: Genome) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(genome)).strip("_")[:100]  # short forms with options get long
    base = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out


def input_spec(data: CifarData) -> dict[str, Any]:
    """The input a model trained on `data` expects: 3x32x32 RGB, NCHW, float32, normalised per
    channel with the training split's statistics as `(pixel / 255 - mean) / std`."""
    return {
        "shape": [3, 32, 32],
        "layout": "NCHW",
        "channels": "RGB",
        "dtype": "float32",
        "mean": data.mean.cpu().tolist(),
        "std": data.std.cpu().tolist(),
        "normalize": "(pixel / 255 - mean) / std, per channel",
        "num_classes": data.num_classes,
        "classes": list(data.classes),
    }


def train_genome_command(
    genome: Genome | str,
    recipe: Recipe,
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    *,
    device: str | None = None,
    val_size: int = 5000,
    subset: int | None = None,
    progress: bool = True,
    data: CifarData | None = None,
    teacher: str | Path | None = None,
    storage: str | None = None,
) -> dict[str, Any]:
    """Train one genome (a Genome or a GENOME argument) with `recipe`, report val and test
    accuracy, and save `model.pt` (state_dict), `genome.json` and `result.json` in `out_dir`
    (default `runs/<genome>-<timestamp>/`). `teacher`: a run folder or `STUDY#N` (in `storage`)
    whose model teaches this one (`recipe.kd_alpha` weighs it). Returns the summary written to
    result.json; a failed run still writes result.json, then raises NasError with the reason."""
    g = parse_genome(genome, storage=storage) if isinstance(genome, str) else genome
    recipe = recipe_for(g, recipe)  # the training genes a search chose for it, if any
    dev = torch.device(device) if device else default_device()
    teacher_run, teacher_model = load_teacher(teacher, storage) if teacher else (None, None)
    if data is None:  # a caller training several genomes passes the data it loaded once
        data = load_cifar100(data_dir, device=dev, val_size=val_size, subset=subset)
    lines = EpochLines(progress, f"training {g}", recipe.epochs)
    out = Path(out_dir) if out_dir else _new_run_dir(g)
    # A named folder is where a rerun looks: an interrupted training goes on from its last epoch.
    checkpoint = out / CHECKPOINT if out_dir else None
    result = train(
        g, data, recipe, dev, progress=progress, teacher=teacher_model, callback=lines, checkpoint=checkpoint
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "genome.json").write_text(g.to_json() + "\n")
    summary: dict[str, Any] = {
        "run_dir": str(out),
        "genome": g.to_dict(),
        "genome_str": str(g),
        "params": result.params,
        "recipe": recipe.to_dict(),
        "recipe_tag": recipe.tag,
        "val_size": len(data.val_y),
        "subset": subset,
        "train_size": len(data.train_y),
        "val_acc": result.val_acc,
        "test_acc": None,
        "teacher": str(teacher_run) if teacher_run else None,
        # What the model expects as input: the exported model (nas export) needs it to be usable.
        "input": input_spec(data),
        **{k: v for k, v in result.to_dict().items() if k not in ("val_acc", "params")},
    }
    if result.ok:
        answer = predictor(result.model, recipe.tta)
        # float32, the arithmetic of the exported ONNX model: the reported accuracy is what a user gets
        summary["test_acc"] = evaluate(answer, data.test_x, data.test_y, data, bf16=False)
        torch.save({k: v.cpu() for k, v in result.model.state_dict().items()}, out / "model.pt")
    (out / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)  # the result is saved: a rerun trains afresh
    if not result.ok:
        raise NasError(f"training failed: {result.failure} (details in {out / 'result.json'})")
    return summary


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's result.json ({} when it has none)."""
    path = Path(run_dir) / "result.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as e:
        raise NasError(f"{path} is not valid JSON: {e}") from None


def load_trained(run_dir: str | Path) -> tuple[Genome, nn.Module]:
    """The genome and trained model (in eval mode, on the CPU) saved by `train_genome_command`,
    wrapped in the test-time augmentation its recipe used (so what answers is what was tested)."""
    run = Path(run_dir)
    for name in ("genome.json", "model.pt"):
        if not (run / name).is_file():
            raise NasError(f"{run} is not a finished training run: {name} is missing")
    genome = Genome.from_json((run / "genome.json").read_text(), str(run / "genome.json"))
    model = build_model(genome)
    try:
        model.load_state_dict(torch.load(run / "model.pt", map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, EOFError) as e:
        raise NasError(f"{run / 'model.pt'} does not fit genome {genome}: {str(e).splitlines()[0]}") from None
    tta = (run_summary(run).get("recipe") or {}).get("tta", "none")
    return genome, predictor(model, tta).eval()


def load_teacher(ref: str | Path, storage: str | None = None) -> tuple[Path, nn.Module]:
    """A teacher for distillation: the run folder `ref` names (a folder or `STUDY#N`) and its
    trained model. A teacher trained on other inputs than CIFAR-100's 3x32x32 images is a
    NasError; its class count is checked against the student's data when training starts."""
    run, _ = resolve_run(str(ref), storage)
    spec = run_summary(run).get("input") or {}
    if spec.get("shape", [3, 32, 32]) != [3, 32, 32] or spec.get("channels", "RGB") != "RGB":
        raise NasError(
            f"teacher {ref} was trained on {spec.get('shape')} {spec.get('channels')} inputs, not 3x32x32 RGB images"
        )
    genome, model = load_trained(run)
    # The teacher answers on the student's augmented batch itself: its flip average would double
    # its cost per student step.
    return run, model.model if isinstance(model, FlipAverage) else model


# ---------------------------------------------------------------- RUN as STUDY#N


def parse_trial_ref(ref: str) -> tuple[str, int] | None:
    """`STUDY#N` -> (study name, N); None when `ref` is not of that form."""
    name, sep, number = ref.rpartition("#")
    if not sep or not name:
        return None
    try:
        n = int(number)
    except ValueError:
        raise NasError(f"'{ref}': the part after '#' must be a trial number, e.g. {name}#3") from None
    return name, n


def resolve_run(ref: str, storage: str | None = None) -> tuple[Path, dict[str, Any]]:
    """A RUN argument (a run folder, or `STUDY#N` with weights) -> the folder and where it came from."""
    trial = None if Path(ref).is_dir() else parse_trial_ref(ref)
    if trial is None:
        if not Path(ref).is_dir():
            raise NasError(
                f"{ref}: no such training run folder (RUN is a folder written by nas train, or STUDY#N with --storage)"
            )
        return Path(ref), {}
    return trial_run_dir(*trial, storage=storage)


def train_command(genome_json: str, recipe: dict[str, Any] | None, out: str, val_size: int | None = None) -> str:
    """The `nas train` command line that trains `genome_json` with `recipe` into `out`."""
    r = {**Recipe().to_dict(), **(recipe or {})}
    flags = [f"--epochs {r['epochs']}"]
    for f, flag in recipe_options():  # the options whose value is not the default
        if f.name != "epochs" and r[f.name] != f.default:
            flags.append(flag if isinstance(f.default, bool) else f"{flag} {r[f.name]}")
    if val_size and val_size != 5000:
        flags.append(f"--val-size {val_size}")
    return f"nas train {shlex.quote(genome_json)} {' '.join(flags)} --out {shlex.quote(out)}"


def trial_run_dir(study_name: str, number: int, storage: str | None = None) -> tuple[Path, dict[str, Any]]:
    """The training run that holds trial `number`'s weights, and where it came from: the study's
    final training (`final.run_dir`) when the trial is the winner or has the winner's genome.
    NasError otherwise, with the commands that make a run and export it."""
    import optuna

    from nas.storage import open_storage, resolve_storage

    st = open_storage(storage)
    try:
        study = optuna.load_study(study_name=study_name, storage=st)
    except KeyError:
        names = optuna.get_all_study_names(st)
        hint = f" (studies there: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})" if names else ""
        raise NasError(f"no study '{study_name}' in {resolve_storage(storage)}{hint}") from None
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise NasError(f"study '{study_name}' has no trial #{number} (it has {len(trials)} trials)")
    t = trials[number]
    text = t.user_attrs.get("genome")
    if not isinstance(text, str):
        raise NasError(f"trial #{number} of study '{study_name}' has no genome recorded")
    final = study.user_attrs.get("final") or {}
    same = (
        isinstance(final.get("genome"), str) and Genome.from_json(final["genome"]).key() == Genome.from_json(text).key()
    )
    source = {"study": study_name, "trial": number, "storage": resolve_storage(storage)}
    if (final.get("trial") == number or same) and final.get("run_dir"):
        run = Path(final["run_dir"])
        if not (run / "model.pt").is_file():
            raise NasError(
                f"trial #{number} of study '{study_name}' was trained in {run}, which is not here "
                f"(run nas export in the folder the sweep ran in, or pass that folder)"
            )
        return run, {**source, "final_training_of_trial": final.get("trial")}
    out = f"runs/{study_name}-t{number}"
    recipe = final.get("recipe") if same else t.user_attrs.get("recipe") or study.user_attrs.get("recipe")
    train_line = train_command(text, recipe, out, study.user_attrs.get("val_size"))
    raise NasError(
        f"trial #{number} of study '{study_name}' has no trained weights (search trials keep none; only a "
        f"sweep's final training of the winner does): train it with  {train_line}  then  nas export {out}"
    )
