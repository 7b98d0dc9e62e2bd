"""Engine baseline for the finetune benchmark: ONNX Runtime's training API
driven from Python on the same training artifacts the Rust loop used, with
random inputs already in memory (no data loading, no augmentation). With
--prefix-model, each batch first goes through the frozen prefix in an
inference session (the prefix-as-inference mode).

Prints one JSON line: images, seconds, images_per_second, peak_rss_mb.
"""

import argparse
import importlib.util
import json
import resource
import sys
import time
import types

import numpy as np

# onnxruntime.training's __init__ imports torch (for ORTModule); the api
# submodule needs none. A bare package in its place avoids it (as the Rust
# side does, see crates/finetune/src/ort_training.rs).
_spec = importlib.util.find_spec("onnxruntime.training")
_package = types.ModuleType("onnxruntime.training")
_package.__path__ = list(_spec.submodule_search_locations)
sys.modules["onnxruntime.training"] = _package
from onnxruntime.training.api import CheckpointState, Module, Optimizer  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--artifacts", required=True)
    p.add_argument("--item-shape", required=True, help="comma-separated, e.g. 3,224,224")
    p.add_argument("--classes", type=int, required=True)
    p.add_argument("--images", type=int, required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--prefix-model", help="run this frozen prefix as inference on random images first")
    p.add_argument("--image-shape", default="3,224,224", help="the prefix's input, per image")
    args = p.parse_args()

    state = CheckpointState.load_checkpoint(f"{args.artifacts}/checkpoint")
    module = Module(
        f"{args.artifacts}/training_model.onnx", state, f"{args.artifacts}/eval_model.onnx"
    )
    optimizer = Optimizer(f"{args.artifacts}/optimizer_model.onnx", module)
    optimizer.set_learning_rate(args.learning_rate)
    module.train()
    item = [int(d) for d in args.item_shape.split(",")]
    prefix = None
    if args.prefix_model:
        import onnxruntime

        prefix = onnxruntime.InferenceSession(args.prefix_model, providers=["CPUExecutionProvider"])
        prefix_input = prefix.get_inputs()[0].name
        item = [int(d) for d in args.image_shape.split(",")]
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    done = 0
    while done < args.images:
        n = min(args.batch, args.images - done)
        x = rng.uniform(-2, 2, size=[n] + item).astype(np.float32)
        y = rng.integers(0, args.classes, size=n).astype(np.int64)
        if prefix is not None:
            x = prefix.run(None, {prefix_input: x})[0]
        module(x, y)
        optimizer.step()
        module.lazy_reset_grad()
        done += n
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({
        "images": done,
        "seconds": seconds,
        "images_per_second": done / seconds,
        "peak_rss_mb": peak,
    }))


if __name__ == "__main__":
    main()
