"""How long each checkpointing callback blocks training, side by side in one process.

One model per size (a dense stack with Adam), the same data, every contender in
turn: no checkpointing, keras_resume (StepBackup + RngCapture; background
writer, and with `background=False`), Keras BackupAndRestore(save_freq=N),
ModelCheckpoint(save_weights_only=True, save_freq=N) and OrbaxCheckpoint
(save_freq=N, when orbax-checkpoint is installed: `pip install -e ".[bench]"`).

Figures per contender:
- stall per save: the time the training loop is blocked in the save hook (for
  keras_resume: waiting for the previous save, if still writing, plus the host
  copy), mean over the run's saves;
- the floor: a bare host copy of every variable (`v.numpy()`, best of 3);
- fit overhead: wall time of `fit` versus the mean of the runs without
  checkpointing just before and after it (median over `--repeats`), every run
  from the same initial state; it includes the wait for the last save at the
  end of `fit`. CPU overhead: the same for the process's CPU seconds;
- restore: keras_resume's `restore` (which verifies checksums) versus
  `model.load_weights` of the same `.weights.h5` file, best of 3 each;
- bytes on disk versus the raw bytes of the variables;
- stall per save is the median over all saves (mean and max are in the JSON);
- peak RSS above the run without checkpointing (Linux VmHWM, reset before each
  run; median over runs).

    python benchmarks/stall.py --params 1e6 25e6 --every 20 --saves 5 --json stall.json

On JAX (KERAS_BACKEND=jax) with an accelerator, keras_resume's default
`snapshot="auto"` copies on the device; `keras_resume_host` is the same with
`snapshot="host"`, and the device-copy floor is printed. The GPU model of the
backends issue (8 x Dense(4096) + Adam, 134M parameters):

    KERAS_BACKEND=jax python benchmarks/stall.py --params 134e6 --batch 128 --json stall-gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_resume as kr  # noqa: E402

# width, depth; 134e6 is the GPU model of the backends issue: 8 x Dense(4096) + Adam.
SHAPES = {1e6: (512, 4), 25e6: (2048, 6), 100e6: (4096, 6), 134e6: (4096, 8)}


def build(params: float):
    width, depth = SHAPES[params]
    keras.utils.set_random_seed(0)
    layers = [keras.Input((width,))]
    layers += [keras.layers.Dense(width, activation="relu") for _ in range(depth - 1)]
    layers += [keras.layers.Dense(width)]
    model = keras.Sequential(layers)
    model.compile(optimizer="adam", loss="mse")
    return model


def state_variables(model):
    return model.weights + model.optimizer.variables


def host_copy_seconds(model, repeats=3) -> float:
    """The floor: one host copy of every variable (`v.numpy()` copies), best of 3."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        copies = [v.numpy() for v in state_variables(model)]
        times.append(time.perf_counter() - start)
        del copies
    return min(times)


def device_copy_seconds(model, repeats=3) -> float | None:
    """JAX on an accelerator: one device-side copy of every variable, finished, best of 3."""
    if keras.backend.backend() != "jax":
        return None
    import jax
    import jax.numpy as jnp

    values = [v.value for v in state_variables(model)]
    if all(d.platform == "cpu" for value in values for d in value.devices()):
        return None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready([jnp.array(value, copy=True) for value in values])
        times.append(time.perf_counter() - start)
    return min(times)


def describe_device() -> str:
    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        return f"jax {jax.__version__} on {device.platform}: {device.device_kind}"
    return f"{keras.backend.backend()} on CPU"


def timed(obj, name, sink):
    """Wraps `obj.name` so that each call's duration is appended to `sink`."""
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - start)

    setattr(obj, name, wrapper)


def orbax_available() -> bool:
    try:
        import orbax.checkpoint  # noqa: F401
    except ImportError:
        return False
    return True


def contender(name, directory: Path, every: int, stalls: list):
    if name == "none":
        return []
    if name.startswith("keras_resume"):
        background = name != "keras_resume_sync"
        snapshot = "host" if name == "keras_resume_host" else "auto"
        backup = kr.StepBackup(
            directory, every_n_steps=every, keep=1, background=background, snapshot=snapshot
        )
        timed(backup, "_save", stalls)
        return [backup, kr.RngCapture(directory)]
    if name == "OrbaxCheckpoint":
        callback = keras.callbacks.OrbaxCheckpoint(
            str(directory.resolve()), save_freq=every, save_weights_only=True, max_to_keep=1
        )
        timed(callback, "_save_checkpoint", stalls)
        return [callback]
    if name == "BackupAndRestore":
        callback = keras.callbacks.BackupAndRestore(
            str(directory), save_freq=every, delete_checkpoint=False
        )
    else:
        callback = keras.callbacks.ModelCheckpoint(
            str(directory / "model.weights.h5"), save_weights_only=True, save_freq=every
        )
    timed(callback, "_save_model", stalls)
    return [callback]


def disk_bytes(directory: Path) -> int:
    return sum(
        p.stat().st_size
        for p in directory.rglob("*")
        if p.is_file() and p.name != ".lock" and "keras-resume-best" not in p.name
    )


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset VmHWM to the current RSS
        f.write("5")


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_size(
    params: float, every: int, saves: int, batch: int, repeats: int, workdir: Path
) -> list[dict]:
    width, _ = SHAPES[params]
    steps = every * saves
    x = np.random.RandomState(0).normal(size=(steps * batch, width)).astype("float32")
    model = build(params)
    model.fit(x[:batch], x[:batch], batch_size=batch, epochs=1, verbose=0)  # build and trace
    initial = [v.numpy() for v in state_variables(model)]
    raw = sum(a.nbytes for a in initial)
    floor = host_copy_seconds(model)
    device_floor = device_copy_seconds(model)
    names = ["none", "keras_resume", "keras_resume_sync", "BackupAndRestore", "ModelCheckpoint"]
    if device_floor is not None:  # snapshot="auto" copies on the device: compare with host
        names.insert(2, "keras_resume_host")
    if orbax_available():
        names.append("OrbaxCheckpoint")
    runs: dict[str, list[dict]] = {name: [] for name in names}
    # Each contender runs between two runs without checkpointing, and its fit
    # overhead is measured against their mean: on this VM the CPU we get drifts
    # (at times 1.6x the wall time for the same CPU seconds), slowly enough that
    # neighbouring runs share it. Every run starts from the same state, so the
    # arithmetic (denormals included) is the same; only the checkpointing differs.
    order = ["none"]
    for name in names[1:]:
        order += [name, "none"]
    for _ in range(repeats):
        previous_none = None
        for position, name in enumerate(order):
            run = one_run(model, initial, name, workdir / f"{int(params)}-{name}", every, x, batch)
            if name != "none" and name != "OrbaxCheckpoint":
                run.update(restore_seconds(name, params, workdir / f"{int(params)}-{name}"))
            shutil.rmtree(workdir / f"{int(params)}-{name}", ignore_errors=True)
            if name == "none":
                if previous_none is None:
                    runs["none"].append(run)
                previous_none = run
                if position and order[position - 1] != "none":
                    pending = runs[order[position - 1]][-1]
                    pending["none_fit_s"] = (pending["none_fit_s"] + run["fit_s"]) / 2
            else:
                run["none_fit_s"] = previous_none["fit_s"]
                runs[name].append(run)
    rows = []
    for name in names:
        stalls = [s for run in runs[name] for s in run["stalls"]]
        overheads = [r["fit_s"] / r["none_fit_s"] - 1 for r in runs[name] if "none_fit_s" in r]
        row = {
            "params": int(sum(np.prod(v.shape) for v in model.weights)),
            "contender": name,
            "batch": batch,
            "repeats": repeats,
            "fit_s_all": [round(r["fit_s"], 3) for r in runs[name]],
            "none_fit_s_all": [round(r.get("none_fit_s", r["fit_s"]), 3) for r in runs[name]],
            "cpu_s_all": [round(r["cpu_s"], 3) for r in runs[name]],
            "overhead_vs_none": round(median(overheads), 3) if overheads else 0.0,
            "saves": len(stalls) // repeats,
            "stall_per_save_s": round(float(np.median(stalls)), 4) if stalls else 0.0,
            "stall_mean_s": round(float(np.mean(stalls)), 4) if stalls else 0.0,
            "stall_max_s": round(max(stalls), 4) if stalls else 0.0,
            "raw_state_bytes": raw,
            "host_copy_s": round(floor, 4),
            "device_copy_s": round(device_floor, 4) if device_floor is not None else None,
            "device": describe_device(),
            "peak_rss_bytes": int(median(r["rss"] for r in runs[name])),
        }
        for key in ("disk_bytes", "restore_s", "load_weights_s"):
            if key in runs[name][0]:
                row[key] = min(r[key] for r in runs[name])
        rows.append(row)
    base = rows[0]
    for row in rows:
        row["rss_above_none_bytes"] = row["peak_rss_bytes"] - base["peak_rss_bytes"]
        row["cpu_overhead_vs_none"] = round(
            median(row["cpu_s_all"]) / median(base["cpu_s_all"]) - 1, 3
        )
    return rows


def one_run(model, initial, name, directory: Path, every: int, x, batch: int) -> dict:
    stalls: list[float] = []
    callbacks = contender(name, directory, every, stalls)
    for variable, value in zip(state_variables(model), initial):
        variable.assign(value)
    reset_peak_rss()
    start, cpu = time.perf_counter(), time.process_time()
    model.fit(x, x, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    return {
        "fit_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu,
        "stalls": stalls,
        "rss": peak_rss(),
        **({"disk_bytes": disk_bytes(directory)} if name != "none" else {}),
    }


def restore_seconds(name, params, directory: Path, repeats: int = 3) -> dict:
    """Best-of-`repeats` restore time, and `load_weights` of the same file."""
    fresh = build(params)
    fresh.optimizer.build(fresh.trainable_variables)
    if name.startswith("keras_resume"):
        entry = kr.CheckpointDirectory(directory).select("latest")
        weights = directory / entry["dir"] / "model.weights.h5"
    elif name == "BackupAndRestore":
        weights = directory / "latest.weights.h5"
    else:
        weights = directory / "model.weights.h5"
    out = {}
    for key, load in (
        ("load_weights_s", lambda: fresh.load_weights(str(weights))),
        ("restore_s", lambda: kr.restore(fresh, directory)),
    ):
        if key == "restore_s" and not name.startswith("keras_resume"):
            continue
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            load()
            times.append(time.perf_counter() - start)
        out[key] = round(min(times), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--params", type=float, nargs="+", default=[1e6, 25e6], choices=sorted(SHAPES)
    )
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--saves", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        for params in args.params:
            rows += run_size(params, args.every, args.saves, args.batch, args.repeats, Path(tmp))
    header = (
        f"{'params':>11} {'contender':<18}{'stall/save s':>13}{'x host copy':>12}"
        f"{'fit overhead':>13}{'CPU overhead':>13}{'restore s':>10}{'x load_w':>9}"
        f"{'disk/raw':>9}{'RSS+/raw':>9}"
    )
    print(
        f"{describe_device()}; batch {args.batch}, a save every {args.every} steps, "
        f"{args.saves} saves a run, {args.repeats} repetition(s)"
    )
    for r in rows:
        if r["device_copy_s"] is not None and r["contender"] == "none":
            print(f"device copy of the state ({r['params']} params): {r['device_copy_s']:.4f} s")
    print(header)
    for r in rows:
        ratio = r["stall_per_save_s"] / r["host_copy_s"] if r["saves"] else 0
        disk = r.get("disk_bytes", 0) / r["raw_state_bytes"]
        restore = r.get("restore_s", r.get("load_weights_s", 0))
        vs_load = r["restore_s"] / r["load_weights_s"] if "restore_s" in r else 0
        rss = r["rss_above_none_bytes"] / r["raw_state_bytes"]
        print(
            f"{r['params']:>11} {r['contender']:<18}{r['stall_per_save_s']:>13.4f}"
            f"{ratio:>12.2f}{r['overhead_vs_none']:>13.1%}{r['cpu_overhead_vs_none']:>13.1%}"
            f"{restore:>10.3f}"
            f"{vs_load:>9.2f}{disk:>9.2f}{rss:>9.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
