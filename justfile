# Recipes mirroring `cargo xtask` for people who use `just`.

# Run the pipeline end to end (built-in demo dataset unless --data is given).
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
