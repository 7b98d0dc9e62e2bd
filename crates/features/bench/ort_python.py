#!/usr/bin/env python3
"""Baseline for `features-bench`: the same conv-base ONNX file timed with the
`onnxruntime` Python package, and the feature-cache segments read back by
pyarrow and DuckDB.

Run in a throwaway venv:
    python3 -m venv target/bench/venv-ort
    target/bench/venv-ort/bin/pip install onnxruntime==1.32.0 numpy pyarrow duckdb

    python ort_python.py time MODEL.onnx --input data --size 224 --batches 1,8,32 --reps 4,2,2 --threads 2
    python ort_python.py read SEGMENT.parquet [...]

Timing protocol (the same as the Rust side): intra-op threads as given, one
inter-op thread, graph optimisation ORT_ENABLE_ALL, one warm-up run at batch
1, then `reps` timed runs at each batch size. Prints one JSON object.
"""

import argparse
import json
import sys
import time


def time_model(a):
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = a.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(a.model, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)

    def batch(n):
        shape = (n, 3, a.size, a.size) if a.layout == "nchw" else (n, a.size, a.size, 3)
        return rng.standard_normal(shape, dtype=np.float32)

    session.run(None, {a.input: batch(1)})  # warm-up
    rates = {}
    for n, reps in zip(map(int, a.batches.split(",")), map(int, a.reps.split(","))):
        x = batch(n)
        start = time.perf_counter()
        for _ in range(reps):
            session.run(None, {a.input: x})
        rates[str(n)] = n * reps / (time.perf_counter() - start)
        print(f"onnxruntime {ort.__version__}: batch {n}: {rates[str(n)]:.2f} images/s", file=sys.stderr)
    print(json.dumps({"onnxruntime": ort.__version__, "threads": a.threads, "images_per_s": rates}))


def read_segments(a):
    import pyarrow
    import pyarrow.parquet as pq

    out = {"pyarrow": pyarrow.__version__, "segments": []}
    for path in a.segments:
        table = pq.read_table(path)
        meta = pq.read_metadata(path).metadata or {}
        key = json.loads(meta.get(b"tl.features.key", b"{}"))
        entry = {
            "file": path.rsplit("/", 1)[-1],
            "rows": table.num_rows,
            "embedding": str(table.schema.field("embedding").type),
            "key_dtype": key.get("dtype"),
        }
        try:
            import duckdb

            out["duckdb"] = duckdb.__version__
            rows, width = duckdb.connect().execute(
                f"SELECT count(*), max(len(embedding)) FROM read_parquet('{path}')"
            ).fetchone()
            entry["duckdb"] = f"{rows} rows of {width} values"
        except ImportError:
            entry["duckdb"] = "not installed"
        except Exception as e:  # noqa: BLE001 - report what DuckDB says
            entry["duckdb"] = f"error: {str(e).splitlines()[0]}"
        out["segments"].append(entry)
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("time")
    t.add_argument("model")
    t.add_argument("--input", default="data")
    t.add_argument("--size", type=int, default=224)
    t.add_argument("--layout", default="nchw", choices=["nchw", "nhwc"])
    t.add_argument("--batches", default="1,8,32")
    t.add_argument("--reps", default="4,2,2")
    t.add_argument("--threads", type=int, required=True)
    r = sub.add_parser("read")
    r.add_argument("segments", nargs="+")
    a = p.parse_args()
    if a.command == "time":
        time_model(a)
    else:
        read_segments(a)


if __name__ == "__main__":
    main()
