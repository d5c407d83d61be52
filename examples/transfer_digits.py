"""Does transfer learning help with few labels? Digits 0-4 -> digits 5-9.

Pre-trains an MLP (64-64, elu, batch norm) on every training row of digits
0-4, then trains on digits 5-9 with only 10 labelled rows per class, three
ways: from scratch, from the pre-trained hidden layers kept frozen (a new
5-class head), and frozen for 200 steps then all fine-tuned. Scored on the
test rows of digits 5-9, over 5 seeds (mean ± std):

    PYTHONPATH=. python examples/transfer_digits.py

Each seed draws its own 10 rows per class and its own initial weights.
"""

import os
import tempfile

import numpy as np
import tensorflow as tf

import lowtf

SEEDS = (0, 1, 2, 3, 4)
PER_CLASS = 10
HIDDEN = (64, 64)
OPTIONS = lowtf.StepOptions(jit_compile=False)


def subset(x, y, classes, per_class=None, rs=None):
    keep = np.isin(y, classes)
    x, y = x[keep], y[keep] - min(classes)
    if per_class is not None:
        rows = np.concatenate(
            [rs.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(len(classes))]
        )
        x, y = x[rows], y[rows]
    return x, y.astype(np.int64)


def train(model, data, model_dir, max_steps, unfreeze_at=None, lr=1e-3, batch=50):
    lowtf.fit(
        model,
        tf.keras.optimizers.Adam(lr),
        train=data["train"],
        validation=data["validation"],
        model_dir=model_dir,
        config=lowtf.TrainConfig(
            batch_size=batch, max_steps=max_steps, eval_every=25, patience=150,
            unfreeze_at=unfreeze_at,
        ),
        step_options=OPTIONS,
        log=lambda line: None,
    )
    x, y = data["test"]
    return lowtf.Evaluator(model, jit_compile=False)(x, y)["accuracy"]


def main():
    digits = lowtf.load_dataset("digits")
    old, new = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
    scores = {"scratch": [], "frozen": [], "frozen then fine-tuned": []}
    root = tempfile.mkdtemp(prefix="transfer_digits_")
    for seed in SEEDS:
        rs = np.random.RandomState(seed)
        source = {
            "train": subset(*digits.train, old),
            "validation": subset(*digits.validation, old),
            "test": subset(*digits.test, old),
        }
        target = {
            "train": subset(*digits.train, new, PER_CLASS, rs),
            "validation": subset(*digits.validation, new),
            "test": subset(*digits.test, new),
        }
        pre_dir = os.path.join(root, f"pre-{seed}")
        pre = lowtf.mlp(HIDDEN, num_classes=5, batchnorm=True, seed=seed)
        pre_acc = train(pre, source, pre_dir, max_steps=1000, batch=128)
        for name, values in scores.items():
            model = lowtf.mlp(HIDDEN, num_classes=5, batchnorm=True, seed=100 + seed)
            model(target["train"][0][:1])
            unfreeze_at = None
            if name != "scratch":
                lowtf.train.init_from(model, pre_dir, log=lambda line: None)
                lowtf.train.freeze(model, len(HIDDEN))
                unfreeze_at = 200 if name.endswith("fine-tuned") else None
            run_dir = os.path.join(root, f"{name.split()[0]}-{name.split()[-1]}-{seed}")
            values.append(train(model, target, run_dir, 1000, unfreeze_at, batch=50))
        print(f"seed {seed}: pre-trained 0-4 test accuracy {pre_acc:.3f}; " + ", ".join(
            f"{name} {values[-1]:.3f}" for name, values in scores.items()), flush=True)
    print(f"digits 5-9, {PER_CLASS} labelled rows per class, test accuracy over {len(SEEDS)} seeds:")
    for name, values in scores.items():
        print(f"  {name:24s} {np.mean(values):.3f} ± {np.std(values):.3f}")


if __name__ == "__main__":
    main()
