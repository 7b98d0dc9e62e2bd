"""Baseline for the ingest benchmark: the same job with Pillow and pyarrow.

Decode, EXIF transpose, shorter side 256 with Lanczos, SHA-256, Parquet with
zstd; like a straightforward Python script, it holds every row in memory and
writes at the end. With --procs N the files are split across N processes,
each writing its own file.

usage: ingest_pillow.py ROOT OUT_DIR [--procs N]
"""
import hashlib
import json
import os
import sys
import time
from multiprocessing import Pool

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps


def list_files(root):
    out = []
    for label in sorted(os.listdir(root)):
        d = os.path.join(root, label)
        if os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                out.append((os.path.join(d, name), label))
    return out


def work(args):
    files, out_path = args
    rows = {k: [] for k in ("content_id", "path", "label", "width", "height", "pixels")}
    for path, label in files:
        data = open(path, "rb").read()
        img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        w, h = img.size
        s = 256 / min(w, h)
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)
        rows["content_id"].append(hashlib.sha256(data).hexdigest())
        rows["path"].append(path)
        rows["label"].append(label)
        rows["width"].append(w)
        rows["height"].append(h)
        rows["pixels"].append(img.tobytes())
    pq.write_table(pa.table(rows), out_path, compression="zstd")
    return len(files)


def main():
    root, out_dir = sys.argv[1], sys.argv[2]
    procs = int(sys.argv[sys.argv.index("--procs") + 1]) if "--procs" in sys.argv else 1
    os.makedirs(out_dir, exist_ok=True)
    files = list_files(root)
    parts = [(files[i::procs], os.path.join(out_dir, f"part-{i}.parquet")) for i in range(procs)]
    start = time.perf_counter()
    if procs == 1:
        n = work(parts[0])
    else:
        with Pool(procs) as pool:
            n = sum(pool.map(work, parts))
    secs = time.perf_counter() - start
    print(json.dumps({"images": n, "seconds": secs, "images_per_s": n / secs, "procs": procs}))


if __name__ == "__main__":
    main()
