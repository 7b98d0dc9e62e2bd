//! Training-step throughput of the seed's head on VGG16 embeddings:
//! 25,088 → 1024 (ReLU) → 5, Adam, batches of 32 and 128.
//!
//! Run: `cargo bench -p head --bench train_step` (release profile).
//! Prints samples/s per batch size and where a step's time goes.

use std::time::{Duration, Instant};

use head::{Activation, Init, Mlp, OptimizerConfig, Trainer};
use ndarray::Array2;
use train_kit::Xoshiro256;

const INPUT: usize = 25_088;
const HIDDEN: usize = 1024;
const CLASSES: usize = 5;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// What the machine gives right now: a square f32 GEMM through the same
/// crate, on all rayon threads. On a shared machine this tells whether the
/// figures below were taken under load.
fn reference_gflops() -> f64 {
    let n = 1536;
    let a = vec![0.5f32; n * n];
    let b = vec![0.25f32; n * n];
    let mut c = vec![0f32; n * n];
    // SAFETY: the pointers cover n×n live buffers with the strides given;
    // `c` is borrowed mutably, so it aliases neither input.
    #[allow(unsafe_code)]
    let run = |c: &mut [f32]| unsafe {
        gemm::gemm(
            n,
            n,
            n,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            n as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        )
    };
    run(&mut c);
    let started = Instant::now();
    for _ in 0..3 {
        run(&mut c);
    }
    3.0 * 2.0 * (n * n * n) as f64 / secs(started.elapsed()) / 1e9
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and a
    // full-size run in the dev profile would only slow the test suite.
    if !std::env::args().any(|a| a == "--bench") {
        println!("train_step: skipped outside `cargo bench -p head --bench train_step`");
        return;
    }
    let threads = rayon::current_num_threads();
    println!("head train-step benchmark: {INPUT} -> {HIDDEN} (relu) -> {CLASSES}, Adam, f32, {threads} rayon threads");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "reference: square sgemm (1536^3, gemm crate) {:.1} GFLOP/s; load average {}",
        reference_gflops(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let mut rng = Xoshiro256::new(1);
    let rows = 512;
    // Non-negative like post-ReLU conv features.
    let data = Array2::from_shape_simple_fn((rows, INPUT), || rng.uniform() as f32);
    let labels: Vec<usize> = (0..rows).map(|i| i % CLASSES).collect();

    for (batch, steps) in [(32usize, 24usize), (128, 10)] {
        let model = Mlp::<f32>::init(&[INPUT, HIDDEN, CLASSES], Activation::Relu, Init::GlorotUniform, 7);
        let mut trainer = Trainer::new(model, OptimizerConfig::default(), 0.0, 0.0, None, 7);
        let batches = rows / batch;
        let x_of = |s: usize| data.slice(ndarray::s![(s % batches) * batch..(s % batches + 1) * batch, ..]);
        let y_of = |s: usize| &labels[(s % batches) * batch..(s % batches + 1) * batch];
        // Warm-up: page in the weights, moments and GEMM buffers.
        for s in 0..2 {
            trainer.step(x_of(s), y_of(s), 1e-3);
        }
        let (mut fwd, mut loss, mut bwd, mut upd) = (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let started = Instant::now();
        for s in 0..steps {
            let out = trainer.step(x_of(s), y_of(s), 1e-3);
            assert!(out.loss.is_finite());
            fwd += out.timings.forward;
            loss += out.timings.loss;
            bwd += out.timings.backward;
            upd += out.timings.update;
        }
        let total = started.elapsed();
        let per_step = secs(total) / steps as f64;
        let samples_per_s = (batch * steps) as f64 / secs(total);

        // Split the fused weight-gradient + Adam phase into its halves.
        let (mut grad_only, mut adam_only) = (Duration::ZERO, Duration::ZERO);
        let reps = 3;
        for s in 0..reps {
            trainer.step(x_of(s), y_of(s), 1e-3);
            let (g, a) = trainer.time_update_halves(x_of(s));
            grad_only += g;
            adam_only += a;
        }
        let grad_only = secs(grad_only) / reps as f64;
        let adam_only = secs(adam_only) / reps as f64;
        let n = steps as f64;
        let (fwd, loss, bwd, upd) = (secs(fwd) / n, secs(loss) / n, secs(bwd) / n, secs(upd) / n);
        let flops = 2.0 * batch as f64 * (INPUT * HIDDEN * 2 + HIDDEN * CLASSES * 3) as f64;
        let matmul = fwd + bwd + grad_only;
        println!();
        println!("batch {batch}: {samples_per_s:.0} samples/s  ({:.1} ms/step, {steps} steps)", per_step * 1e3);
        println!(
            "  step phases: forward {:.1} ms | loss {:.2} ms | backward deltas {:.2} ms | fused weight-grad + Adam {:.1} ms",
            fwd * 1e3,
            loss * 1e3,
            bwd * 1e3,
            upd * 1e3
        );
        println!(
            "  fused phase measured apart: weight-grad GEMM {:.1} ms, Adam pass {:.1} ms (sum {:.1} ms vs fused {:.1} ms)",
            grad_only * 1e3,
            adam_only * 1e3,
            (grad_only + adam_only) * 1e3,
            upd * 1e3
        );
        println!(
            "  share of (matmul + optimiser): matmul {:.0}%, optimiser {:.0}%; GEMM rate {:.1} GFLOP/s",
            100.0 * matmul / (matmul + adam_only),
            100.0 * adam_only / (matmul + adam_only),
            flops / matmul / 1e9
        );
    }
}
