"""Reads an ingest dataset with the clients users point at it: pyarrow and
DuckDB. Prints one JSON line with what each saw; fails loudly on mismatch.

usage: read_dataset.py DATASET_DIR
"""
import glob
import json
import os
import sys

import duckdb
import pyarrow.parquet as pq

d = sys.argv[1]
info = json.load(open(os.path.join(d, "dataset.json")))
files = sorted(glob.glob(os.path.join(d, "*.parquet")))
table = pq.read_table(files, columns=["content_id", "label", "label_index", "split", "stored_width", "stored_height"])
meta = pq.read_metadata(files[0]).metadata
classes = json.loads(meta[b"tl.classes"])
con = duckdb.connect()
duck_rows, duck_pixels = con.execute(
    "select count(*), sum(octet_length(pixels)) from read_parquet(?)", [files]
).fetchone()
expected_pixels = sum(w * h * 3 for w, h in zip(table["stored_width"].to_pylist(), table["stored_height"].to_pylist()))
total = sum(s["rows"] for s in info["splits"].values())
assert table.num_rows == total == duck_rows, (table.num_rows, total, duck_rows)
assert duck_pixels == expected_pixels, (duck_pixels, expected_pixels)
assert classes == info["classes"], (classes, info["classes"])
print(json.dumps({"pyarrow_rows": table.num_rows, "duckdb_rows": duck_rows, "classes": classes}))
