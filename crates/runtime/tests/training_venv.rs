//! The training venv. Creating it downloads the pinned packages with pip
//! and takes about a minute, so this test is opt-in: `cargo test -p runtime -- --ignored`
//! (it reuses a venv that `cargo xtask setup` made).

#[test]
#[ignore = "creates a Python venv with pip; run with --ignored"]
fn the_training_venv_has_the_pinned_packages_and_an_embeddable_python() {
    let venv = runtime::ensure_training_venv().unwrap_or_else(|e| panic!("{e}"));
    assert!(venv.python.exists());
    assert!(venv.site_packages.join("onnxruntime").join("training").is_dir());
    let libpython_dir = venv.libpython_dir().unwrap_or_else(|e| panic!("{e}"));
    assert!(libpython_dir.join("libpython3.11.so").exists());
    // A second call finds it complete and returns the same paths at once.
    let started = std::time::Instant::now();
    assert_eq!(runtime::ensure_training_venv().unwrap(), venv);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}
