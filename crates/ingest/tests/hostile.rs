//! Hostile folders: special files, links that go nowhere or in circles,
//! names that are not UTF-8, decompression bombs and elongated strips are
//! rejects named in the report, never fatal, never read; the conductor's
//! digest lists the same folder without failing; spec paths are relative to
//! the spec file; two runs to one output take turns and clean up after
//! killed ones.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use dataset::{Dataset, Split};
use image::{DynamicImage, ImageFormat, RgbImage};
use ingest::{IngestOptions, IngestSummary, RejectKind};
use spec::DatasetSpec;

fn png(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let img = RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8 ^ seed, y as u8, seed]));
    demo::encode(&DynamicImage::ImageRgb8(img), ImageFormat::Png)
}

/// Two classes of good images (`a/good-*.png`, `b/good-*.png`).
fn good_folder(root: &Path) {
    for (class, seed) in [("a", 1u8), ("b", 100)] {
        fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..4u8 {
            fs::write(root.join(class).join(format!("good-{i}.png")), png(40, 30, seed + i)).unwrap();
        }
    }
}

/// The good folder plus every hostile entry, all in class `a` or at the top.
/// Returns the listener that keeps the socket alive.
fn hostile_folder(root: &Path) -> std::os::unix::net::UnixListener {
    good_folder(root);
    let a = root.join("a");
    let made = Command::new("mkfifo").arg(a.join("fifo.png")).status().unwrap();
    assert!(made.success(), "mkfifo");
    let listener = std::os::unix::net::UnixListener::bind(a.join("socket.png")).unwrap();
    symlink("/dev/zero", a.join("zero.png")).unwrap();
    symlink(a.join("missing.png"), a.join("dangling.png")).unwrap();
    symlink(a.join("loop2.png"), a.join("loop1.png")).unwrap();
    symlink(a.join("loop1.png"), a.join("loop2.png")).unwrap();
    symlink(&a, a.join("subloop")).unwrap(); // a folder linking to its ancestor
    fs::write(a.join("bomb.png"), demo::png_bomb(100_000, 100_000)).unwrap();
    fs::write(a.join("strip.png"), png(100_000, 1, 3)).unwrap();
    fs::write(a.join("small.png"), png(28, 28, 9)).unwrap();
    fs::write(a.join(OsStr::from_bytes(b"caf\xe9.png")), png(20, 20, 4)).unwrap();
    let bad_class = root.join(OsStr::from_bytes(b"cl\xffass"));
    fs::create_dir_all(&bad_class).unwrap();
    fs::write(bad_class.join("x.png"), png(20, 20, 5)).unwrap();
    let bad_folder = a.join(OsStr::from_bytes(b"sub\xfe"));
    fs::create_dir_all(&bad_folder).unwrap();
    fs::write(bad_folder.join("y.png"), png(20, 20, 6)).unwrap();
    listener
}

fn spec_for(root: &Path) -> DatasetSpec {
    DatasetSpec::for_root(root.to_str().unwrap())
}

fn run(spec: &DatasetSpec, out: &Path) -> IngestSummary {
    ingest::ingest(spec, out, &IngestOptions::default(), &progress::Silent).unwrap()
}

fn records(out: &Path) -> Vec<dataset::Record> {
    let ds = Dataset::open(out).unwrap();
    Split::ALL.iter().flat_map(|&s| ds.batches(s, 64, false).flat_map(Result::unwrap).collect::<Vec<_>>()).collect()
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ingest"))
}

#[test]
fn hostile_entries_are_named_rejects_and_the_good_images_are_ingested() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, out) = (tmp.path().join("images"), tmp.path().join("out"));
    let _socket = hostile_folder(&root);
    let summary = run(&spec_for(&root), &out);

    let kind_of = |path: &str| -> (RejectKind, String) {
        let r = summary.rejects.iter().find(|r| r.path == path).unwrap_or_else(|| panic!("no reject for {path}"));
        (r.kind, r.reason.clone())
    };
    let expect = [
        ("a/fifo.png", RejectKind::NotAFile, "FIFO"),
        ("a/socket.png", RejectKind::NotAFile, "socket"),
        ("a/zero.png", RejectKind::NotAFile, "character device"),
        ("a/dangling.png", RejectKind::DanglingLink, "missing.png does not exist"),
        ("a/loop1.png", RejectKind::SymlinkLoop, "symlink loop"),
        ("a/loop2.png", RejectKind::SymlinkLoop, "symlink loop"),
        ("a/subloop", RejectKind::SymlinkLoop, "points back to its ancestor"),
        ("a/bomb.png", RejectKind::TooLarge, "100000x100000"),
        ("a/strip.png", RejectKind::TooLarge, "too elongated"),
        ("a/caf\u{FFFD}.png", RejectKind::NonUtf8Name, "file name is not valid UTF-8"),
        ("a/sub\u{FFFD}", RejectKind::NonUtf8Name, "folder name is not valid UTF-8"),
        ("cl\u{FFFD}ass", RejectKind::NonUtf8Name, "class folder name is not valid UTF-8"),
    ];
    for (path, kind, words) in expect {
        let (got, reason) = kind_of(path);
        assert_eq!(got, kind, "{path}: {reason}");
        assert!(reason.contains(words), "{path}: {reason}");
    }
    assert_eq!(summary.rejects.len(), expect.len(), "{:#?}", summary.rejects);
    assert_eq!(summary.info.classes, ["a", "b"], "the non-UTF-8 class folder is not a class");

    // The good images, and the small one at its own size.
    let rows = records(&out);
    assert_eq!(rows.len(), 9);
    let small = rows.iter().find(|r| r.path == "a/small.png").unwrap();
    assert_eq!((small.stored_width, small.stored_height), (28, 28), "never enlarged");
    assert!(rows.iter().all(|r| r.path.is_ascii()), "no lossy path reached the dataset");

    // rejects.csv names each file with its kind and reason.
    let csv = fs::read_to_string(out.join(contracts::dataset::REJECTS_FILE)).unwrap();
    assert!(csv.contains("a/zero.png,not-a-file,not a regular file: a character device"), "{csv}");
    assert!(csv.contains("a/dangling.png,dangling-link,"), "{csv}");
    assert!(csv.contains("a/bomb.png,too-large,"), "{csv}");
    assert!(csv.contains("a/caf\u{FFFD}.png,non-utf8-name,"), "{csv}");
}

#[test]
fn the_digest_lists_a_hostile_folder_like_ingest_and_does_not_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    let _socket = hostile_folder(&root);
    let first = ingest::source::content_digest(&spec_for(&root)).unwrap();
    assert_eq!(ingest::source::content_digest(&spec_for(&root)).unwrap(), first);
    // A reject becoming a good file changes it.
    fs::remove_file(root.join("a/dangling.png")).unwrap();
    fs::write(root.join("a/dangling.png"), png(10, 10, 1)).unwrap();
    assert_ne!(ingest::source::content_digest(&spec_for(&root)).unwrap(), first);
}

#[test]
fn a_file_over_the_byte_limit_is_not_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, out) = (tmp.path().join("images"), tmp.path().join("out"));
    good_folder(&root);
    let mut spec = spec_for(&root);
    spec.max_pixels = 2_000;
    // 8 bytes a pixel + 1 MiB, plus one byte.
    let limit = imaging::max_file_bytes(spec.max_pixels);
    let mut big = png(10, 10, 7);
    big.resize(limit as usize + 1, 0);
    fs::write(root.join("b/big.png"), big).unwrap();
    let summary = run(&spec, &out);
    let reject = summary.rejects.iter().find(|r| r.path == "b/big.png").unwrap();
    assert_eq!(reject.kind, RejectKind::TooLarge);
    assert!(reject.reason.contains(&format!("{} bytes", limit + 1)), "{}", reject.reason);
    assert_eq!(summary.info.total_rows(), 8);
}

#[test]
fn spec_paths_are_relative_to_the_spec_file_from_any_working_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let folder_a = tmp.path().join("A");
    good_folder(&folder_a.join("images"));
    let spec_path = folder_a.join("spec.toml");
    fs::write(&spec_path, "name = \"rel\"\nroot = \"images\"\n").unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();

    let spec = ingest::source::read_spec(&spec_path).unwrap();
    assert_eq!(spec.source, spec::DatasetSource::Root(folder_a.join("images").to_str().unwrap().to_owned()));
    let digest = ingest::source::content_digest(&spec).unwrap();
    assert_eq!(digest, ingest::source::content_digest(&spec_for(&folder_a.join("images"))).unwrap());

    // The binary, run from another folder with a relative --spec path.
    let output = Command::new(bin())
        .current_dir(&elsewhere)
        .args(["--spec", "../A/spec.toml", "--out", "out"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(records(&elsewhere.join("out")).len(), 8);
}

#[test]
fn a_second_run_waits_for_the_lock_then_publishes_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, out) = (tmp.path().join("images"), tmp.path().join("out"));
    good_folder(&root);
    let held = atomic_file::Lock::exclusive(&ingest::lock_path(&out), "test").unwrap();
    let mut child = Command::new(bin())
        .args(["--root", root.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "the second run waits while the lock is held");
    assert!(!out.exists(), "nothing published while waiting");
    drop(held);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("waiting for the dataset") && stderr.contains("another process holds"), "{stderr}");
    assert_eq!(records(&out).len(), 8);
}

#[test]
fn concurrent_runs_to_one_output_both_succeed_with_one_complete_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, out) = (tmp.path().join("images"), tmp.path().join("out"));
    good_folder(&root);
    let spawn = || {
        Command::new(bin())
            .args(["--root", root.to_str().unwrap(), "--out", out.to_str().unwrap(), "--threads", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    for child in [first, second] {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    assert_eq!(records(&out).len(), 8);
    let leftovers: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn staging_left_by_killed_runs_is_removed_and_others_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, out) = (tmp.path().join("images"), tmp.path().join("out"));
    good_folder(&root);
    // Pids above Linux's pid_max (4194304): these processes are dead.
    let stale = [".out.999999991.partial", ".out.old.999999992.partial", ".out.partial", ".out.old"];
    let kept = [".out.v2.999999993.partial", ".other.999999994.partial"];
    for name in stale.iter().chain(&kept) {
        fs::create_dir_all(tmp.path().join(name).join("inner")).unwrap();
    }
    // An existing output is replaced; an empty one (a conductor's fresh
    // folder) is filled.
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("old-file"), b"x").unwrap();
    run(&spec_for(&root), &out);
    assert!(!out.join("old-file").exists());
    for name in stale {
        assert!(!tmp.path().join(name).exists(), "{name} should be removed");
    }
    for name in kept {
        assert!(tmp.path().join(name).exists(), "{name} belongs to another output");
    }
    let fresh = tmp.path().join("fresh");
    fs::create_dir_all(&fresh).unwrap();
    run(&spec_for(&root), &fresh);
    assert_eq!(records(&fresh).len(), 8);
}

#[test]
fn a_root_whose_path_is_not_utf8_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join(OsStr::from_bytes(b"im\xe9ges"));
    good_folder(&root);
    let output =
        Command::new(bin()).arg("--root").arg(&root).arg("--out").arg(tmp.path().join("out")).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("--root") && stderr.contains("im\u{FFFD}ges") && stderr.contains("not valid UTF-8"),
        "{stderr}"
    );
    assert!(!tmp.path().join("out").exists(), "nothing written under a different name");
}
