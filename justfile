# Recipes mirroring `cargo xtask` for people who use `just`.

# Run an experiment end to end (data-specs/experiments/default.toml unless --experiment is given).
pipeline *ARGS:
    cargo xtask pipeline {{ARGS}}

# Formatting, lints and every test: what CI runs.
test *ARGS:
    cargo xtask test {{ARGS}}

# Benchmarks; writes BENCHMARKS.md.
bench *ARGS:
    cargo xtask bench {{ARGS}}

# The procedural demo image folder.
demo-data *ARGS:
    cargo xtask demo-data {{ARGS}}

# Top-k classes for images with a run's fine-tuned model: just predict runs/demo-... photo.jpg
predict MODEL *IMAGES:
    cargo run --release -q -p predict -- --model {{MODEL}} {{IMAGES}}

# Fetch the ONNX Runtime library and the training venv.
setup:
    cargo xtask setup
