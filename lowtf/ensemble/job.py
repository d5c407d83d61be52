"""``bin/train --ensemble=K``: a deep ensemble of K seeds trained as one population.

Deep ensembles (Lakshminarayanan et al. 2017): the configuration of the job
trained from K seeds (``seed``, ``seed + 1``, ...), each member early-stopped
on the validation set by itself, all K in one compiled step
(:class:`lowtf.Population`, :func:`lowtf.population.fit_population`). Their
best weights are averaged as probabilities (:class:`lowtf.Ensemble`), and
each member and the ensemble are scored on the validation and test sets:
cross-entropy, accuracy and expected calibration error (15 equal-width
bins). The model directory holds what ``bin/export`` needs to export the
ensemble as one SavedModel: ``model.json`` (with the members' seeds) and the
members' best weights under ``ensemble/``.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from lowtf import _files
from lowtf.ensemble import selection
from lowtf.ensemble.model import Ensemble
from lowtf.export import spec as export_spec
from lowtf.population import Population, fit_population

# Where the members' best weights go in the model directory.
MEMBERS_DIR = "ensemble"
MEMBERS_PREFIX = os.path.join(MEMBERS_DIR, "members")
SPLITS = ("validation", "test")


def member_seeds(config) -> list[int]:
    """The members' seeds: the job's seed and the next ``ensemble - 1``."""
    return [config.seed + k for k in range(config.ensemble)]


def run(config, *, model_dir: str, data, build, log):
    """Trains the ensemble of ``config`` on ``data``.

    Returns:
      ``(scores, result, models)``: the ensemble's validation and test
      scores (``validation_cross_entropy``, ...) with the ``ensemble`` and
      ``members`` records of summary.json; the population's
      :class:`~lowtf.population.PopulationResult`; the members' models,
      holding their best weights.

    Args:
      config: the job's :class:`lowtf.train.JobConfig` (``ensemble`` >= 2).
      model_dir: the run's directory (the caller holds its lock).
      data: the loaded :class:`lowtf.Dataset`.
      build: the job's builders, an object with ``model(config, data)``,
        ``optimizer(config)``, ``augment(config, data)`` and ``spec(config,
        data)`` (the model's :class:`lowtf.models.ModelSpec`) and
        ``image_shape(data, what)``.
      log: called with each progress line.
    """
    seeds = member_seeds(config)
    x_train, y_train = data.train
    x_val, y_val = data.validation
    n, m = len(y_train), len(y_val)
    x = np.concatenate([x_train, x_val]).astype(np.float32)
    y = np.concatenate([y_train, y_val])
    models = [build.model(dataclasses.replace(config, seed=s), data) for s in seeds]
    population = Population(
        x,
        y,
        models=models,
        train_rows=[np.arange(n)] * len(seeds),
        val_rows=[n + np.arange(m)] * len(seeds),
        seeds=seeds,
        optimizer=build.optimizer(config),
        augment=build.augment(config, data),
        batch_size=config.batch_size,
        monitor=config.monitor,
        patience=config.patience,
        min_delta=config.min_delta,
        jit_compile=config.xla if config.xla is not None else "auto",
        **_techniques(config, data, build),
    )
    log(
        f"ensemble of {len(seeds)} seeds ({seeds[0]}..{seeds[-1]}) of model "
        f"{config.model_name}, trained as one population; writing to {model_dir}"
    )
    result = fit_population(
        population,
        model_dir=model_dir,
        max_steps=config.max_steps,
        eval_every=config.eval_every,
        steps_per_call=config.steps_per_call,
        checkpoint_every=config.checkpoint_every,
        start_from_step=config.warmup,
        log=log,
        run_settings={"dataset": config.dataset, "ensemble": len(seeds)},
    )
    if result.interrupted:
        raise KeyboardInterrupt(result.interrupted)
    best = [population.member(k) for k in range(len(seeds))]
    ensemble = Ensemble(best)
    scores = {split: _scores(ensemble, *getattr(data, split)) for split in SPLITS}
    members = []
    for k, member_result in enumerate(result.members):
        members.append(
            {
                "seed": seeds[k],
                "best_step": member_result.best_step,
                "stop_reason": member_result.stop_reason,
                **{
                    f"{split}_{name}": scores[split]["members"][k][name]
                    for split in SPLITS
                    for name in selection_names()
                },
            }
        )
    summary = {
        f"{split}_{name}": scores[split]["ensemble"][name]
        for split in SPLITS
        for name in selection_names()
    }
    summary["ensemble"] = {"members": len(seeds), "seeds": seeds, **dict(summary)}
    summary["members"] = members
    summary["validation_cross_entropy"] = scores["validation"]["ensemble"]["cross_entropy"]
    _write_members(model_dir, best)
    export_spec.write(model_dir, build.spec(config, data), data, ensemble_seeds=seeds)
    for k, member in enumerate(members):
        log(
            f"member {k} (seed {member['seed']}, best step {member['best_step']}): "
            + _line(member)
        )
    log(f"ensemble of {len(seeds)}: " + _line(summary))
    return summary, result, best


def selection_names() -> tuple:
    return ("cross_entropy", "accuracy", "calibration_error")


def load_members(model_dir: str, models: list) -> None:
    """Reads the members' best weights of an ensemble run into ``models`` (built)."""
    prefix = os.path.join(model_dir, MEMBERS_PREFIX)
    status = tf.train.Checkpoint(members=models).read(prefix)
    try:
        status.assert_existing_objects_matched()
    except AssertionError as error:
        raise ValueError(
            f"{prefix} does not fit {model_dir}/model.json ({error}); was "
            "model.json edited?"
        ) from None


def _write_members(model_dir: str, models: list) -> None:
    """The members' best weights under ``ensemble/``, whole or not at all."""
    prefix = os.path.join(model_dir, MEMBERS_PREFIX)
    _files.write_checkpoint(
        lambda: tf.train.Checkpoint(members=models).write(prefix), prefix
    )


def _techniques(config, data, build) -> dict:
    """The Population arguments of the job's per-member techniques that are set."""
    names = ("label_smoothing", "mixup", "cutmix", "ema", "swa_from")
    given = {name: getattr(config, name) for name in names if getattr(config, name, 0)}
    if given.get("cutmix") and len(data.feature_shape) != 3:
        # Flat examples (the digits' 64 pixels) are cut as the images they are.
        given["image_shape"] = build.image_shape(data, "--cutmix")
    return given


def _scores(ensemble: Ensemble, x, y) -> dict:
    """Each member's and the ensemble's cross-entropy, accuracy and calibration."""
    x = tf.constant(x, tf.float32)
    members = ensemble.member_probabilities(x).numpy()
    mean = ensemble.probabilities(x).numpy()

    def score(p):
        return {
            "cross_entropy": selection.cross_entropy(p, y),
            "accuracy": selection.accuracy(p, y),
            "calibration_error": selection.calibration_error(p, y),
        }

    return {"members": [score(p) for p in members], "ensemble": score(mean)}


def _line(scores: dict) -> str:
    return "  ".join(
        f"{split} ce {scores[f'{split}_cross_entropy']:.4f} acc "
        f"{scores[f'{split}_accuracy']:.4f} ece {scores[f'{split}_calibration_error']:.4f}"
        for split in SPLITS
    )

