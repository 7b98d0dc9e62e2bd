//! The `head` binary's argument handling that needs no features.

use std::process::Command;

/// A settings file with a misspelt key is refused before anything is read,
/// once, naming the file, the line and the column.
#[test]
fn a_misspelt_setting_is_one_error_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("head.toml");
    std::fs::write(&config, "epochs = 3\nhiden = [8]\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_head"))
        .args(["train", "--features", "nowhere", "--out"])
        .arg(dir.path().join("out"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!("head settings {}: line 2, column 1: unknown field `hiden`", config.display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert_eq!(stderr.matches("unknown field").count(), 1, "{stderr}");
    assert!(!dir.path().join("out").exists(), "nothing is written for a refused run");
}
