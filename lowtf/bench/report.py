"""The report side of lowtf.bench: statistics, machine facts and the table."""

from __future__ import annotations

import os
import platform

import numpy as np
import tensorflow as tf


def summarize(per_step: list[float]) -> dict:
    """Median, spread and rates of per-step times (seconds)."""
    values = np.asarray(per_step)
    median = float(np.median(values))
    q25, q75 = np.percentile(values, [25, 75])
    return {
        "median_ms": median * 1e3,
        "min_ms": float(values.min()) * 1e3,
        "max_ms": float(values.max()) * 1e3,
        "iqr_pct": float(100 * (q75 - q25) / median),
        "repeats": len(values),
    }


def regularization_cost(results) -> list[dict]:
    """The share of a step spent on L2 and max-norm: "full" against "dropout"."""
    times = {}
    for row in results:
        c = row["config"]
        key = (c["model"], c["batch_size"], c["mode"], c["steps_per_call"])
        times.setdefault(key, {})[c["regularization"]] = row["lowtf"]["median_ms"]
    out = []
    for (model, batch, mode, spc), by_reg in times.items():
        if "full" in by_reg and "dropout" in by_reg:
            full, dropout = by_reg["full"], by_reg["dropout"]
            out.append(
                dict(
                    model=model,
                    batch_size=batch,
                    mode=mode,
                    steps_per_call=spc,
                    full_ms=full,
                    dropout_only_ms=dropout,
                    share=(full - dropout) / full,
                )
            )
    return out


def machine() -> dict:
    """TensorFlow and Keras versions, CPU model and core count."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            names = [
                line.split(":", 1)[1].strip()
                for line in f
                if line.startswith("model name")
            ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "tensorflow": tf.__version__,
        "keras": tf.keras.__version__ if hasattr(tf.keras, "__version__") else "",
        "python": platform.python_version(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "devices": [d.device_type for d in tf.config.list_physical_devices()],
    }


# What the table's columns mean, printed above it.
LEGEND = (
    "reg: regularization of the step (full: L2 + dropout + max-norm); mode: xla, graph "
    "(tf.function) or auto",
    "spc: steps per compiled call (TrainStep.run); ms/step: median over the repeats; "
    "iqr%: their interquartile range, % of the median",
    "compile s: the first call's extra time (trace + compile); tr: traces of the step "
    "(1: it never retraced)",
    "GFLOP/s: the model's matmul FLOPs per second; ceil%: that, % of the machine's "
    "float32 matmul ceiling (below)",
    "keras ms, keras best: the fastest Keras Model.fit variant (jit_compile x "
    "steps_per_execution); x keras: its ms/step over lowtf's",
)


def table(report: dict) -> str:
    """The report as a fixed-width text table."""
    head = (
        f"{'model':<7}{'batch':>6} {'reg':<8}{'mode':<11}{'spc':>5}"
        f"{'ms/step':>9}{'iqr%':>6}{'steps/s':>9}{'ex/s':>10}{'compile s':>10}{'tr':>3}"
        f"{'GFLOP/s':>9}{'ceil%':>6}{'keras ms':>9}{'keras best':>18}{'x keras':>8}"
    )
    lines = [*LEGEND, head, "-" * len(head)]
    for row in report["results"]:
        c, lo, k = row["config"], row["lowtf"], row.get("keras")
        compile_s = lo["first_call_s"] - lo["median_ms"] / 1e3 * c["steps_per_call"]
        ceiling = (
            f"{100 * lo['ceiling_fraction']:>6.1f}"
            if "ceiling_fraction" in lo
            else f"{'':>6}"
        )
        peer = (
            f"{k['median_ms']:>9.3f}{k['variant']:>18}{row['speedup_vs_keras']:>8.2f}"
            if k
            else ""
        )
        mode = c["mode"]
        if mode == "auto":  # shows what the rule chose
            mode = f"auto({'xla' if lo['xla'] else 'graph'})"
        lines.append(
            f"{c['model']:<7}{c['batch_size']:>6} {c['regularization']:<8}{mode:<11}"
            f"{c['steps_per_call']:>5}{lo['median_ms']:>9.3f}{lo['iqr_pct']:>6.1f}"
            f"{lo['steps_per_s']:>9.0f}{lo['examples_per_s']:>10.0f}{compile_s:>10.2f}"
            f"{lo['traces']:>3}{lo['gflops']:>9.1f}{ceiling}{peer}"
        )
    for cost in report.get("regularization_cost", []):
        lines.append(
            f"regularization (L2 + max-norm) {cost['model']} {cost['mode']}: "
            f"{cost['full_ms']:.3f} ms with, {cost['dropout_only_ms']:.3f} ms with dropout "
            f"only: {100 * cost['share']:.1f}% of a step"
        )
    for bound in report.get("matmul_bounds", []):
        model, batch = bound["config"]
        best = min(
            (
                row["lowtf"]["median_ms"],
                row["config"]["regularization"],
                row["config"]["mode"],
            )
            for row in report["results"]
            if (row["config"]["model"], row["config"]["batch_size"]) == (model, batch)
        )
        modes = ", ".join(
            f"{mode} {bound[mode]['median_ms']:.3f} ms"
            + (
                f" ({100 * bound[mode]['ceiling_fraction']:.1f}% of the ceiling)"
                if "ceiling_fraction" in bound[mode]
                else ""
            )
            for mode in ("xla", "graph")
        )
        fastest = min(bound["xla"]["median_ms"], bound["graph"]["median_ms"])
        lines.append(
            f"matmul bound {model} batch {batch} (its dense products + SGD, nothing else): "
            f"{modes}; the fastest step ({best[1]} {best[2]}) takes {best[0] / fastest:.2f}x"
        )
    if "ceiling" in report:
        ce = report["ceiling"]
        lines.append(
            f"ceiling: {ce['size']}x{ce['size']} float32 matmul, best repeat "
            f"{ce['gflops']:.1f} GFLOP/s (medians: xla {ce['xla_gflops']:.1f}, "
            f"graph {ce['graph_gflops']:.1f}; at start and end: "
            + ", ".join(f"{g:.1f}" for g in ce["measurements"])
            + ")"
        )
    return "\n".join(lines)
