//! The `url` source against a real (tiny, local) HTTP server: good file,
//! 404, truncated body, wrong checksum, a server dying mid-way and the
//! resumed rerun, a server ignoring ranges, and no server at all.
//!
//! The served file is the tiny VGG's ONNX bytes, so a successful download
//! is also cut into a conv base: the whole path a real model takes.

use std::path::Path;
use std::sync::Mutex;

use models::{resolve, resolve_with_progress, ModelError};
use progress::Progress;
use spec::{ModelSource, ModelSpec};

mod common;

use common::server::{Reply, Seen, Server};

fn tiny_onnx() -> Vec<u8> {
    onnx_graph::encode_model(&onnx_graph::vgg::tiny_vgg(7))
}

fn tiny_spec() -> ModelSpec {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data-specs/models/tiny-vgg.toml");
    ModelSpec::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The tiny model as a `url` source at `base_url`, expecting `file`.
fn url_spec(base_url: &str, file: &[u8]) -> ModelSpec {
    let mut spec = tiny_spec();
    spec.name = "tiny-vgg-download".into();
    spec.source = ModelSource::Url {
        url: format!("{base_url}/models/tiny.onnx"),
        sha256: spec::sha256_hex(file),
        size: file.len() as u64,
    };
    spec
}

fn partial_of(spec: &ModelSpec, cache: &Path) -> std::path::PathBuf {
    let mut name = models::fetched_file(spec, cache).unwrap().into_os_string();
    name.push(".partial");
    name.into()
}

/// Records what a download reports.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<(String, u64)>>,
}

impl Progress for Recorder {
    fn start(&self, phase: &str, total: u64) {
        self.events.lock().unwrap().push((format!("start {phase}"), total));
    }
    fn advance(&self, n: u64) {
        self.events.lock().unwrap().push(("advance".into(), n));
    }
    fn finish(&self) {
        self.events.lock().unwrap().push(("finish".into(), 0));
    }
}

impl Recorder {
    fn advanced(&self) -> u64 {
        self.events.lock().unwrap().iter().filter(|(what, _)| what == "advance").map(|(_, n)| n).sum()
    }
}

#[test]
fn a_good_file_is_downloaded_verified_cut_and_cached() {
    let onnx = tiny_onnx();
    let server = Server::start(vec![Reply::File(onnx.clone())]);
    let cache = tempfile::tempdir().unwrap();
    let spec = url_spec(&server.base_url, &onnx);
    let progress = Recorder::default();

    let resolved = resolve_with_progress(&spec, cache.path(), &progress).unwrap();

    assert_eq!(server.finish(), [Seen { path: "/models/tiny.onnx".into(), range_start: None }]);
    assert_eq!(Some(resolved.full.clone()), models::fetched_file(&spec, cache.path()));
    assert_eq!(std::fs::read(&resolved.full).unwrap(), onnx);
    assert!(resolved.pretrained);
    let cut = onnx_graph::read_model(&resolved.conv_base).unwrap();
    assert_eq!(onnx_graph::outputs(&cut).unwrap()[0].name, spec.conv_base.output);
    // The same weights as the generated tiny model give the same conv base.
    assert_eq!(resolved.fingerprint, resolve(&tiny_spec(), cache.path()).unwrap().fingerprint);

    let events = progress.events.lock().unwrap().clone();
    assert_eq!(events.first(), Some(&("start download tiny-vgg-download".into(), onnx.len() as u64)));
    assert_eq!(events.last(), Some(&("finish".into(), 0)));
    assert_eq!(progress.advanced(), onnx.len() as u64);

    // The server is gone: a second run uses the cache.
    assert_eq!(resolve(&spec, cache.path()).unwrap(), resolved);
}

#[test]
fn a_404_names_the_url_and_the_status() {
    let server = Server::start(vec![Reply::NotFound]);
    let cache = tempfile::tempdir().unwrap();
    let spec = url_spec(&server.base_url, &tiny_onnx());

    let err = resolve(&spec, cache.path()).unwrap_err();

    assert!(matches!(err, ModelError::Http { status: 404, .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&format!("{}/models/tiny.onnx", server.base_url)) && text.contains("404"), "{text}");
    server.finish();
}

#[test]
fn a_truncated_response_keeps_the_partial_file_and_says_so() {
    let onnx = tiny_onnx();
    let server = Server::start(vec![Reply::CloseAfter { file: onnx.clone(), sent: onnx.len() / 2 }]);
    let cache = tempfile::tempdir().unwrap();
    let spec = url_spec(&server.base_url, &onnx);

    let err = resolve(&spec, cache.path()).unwrap_err();

    let ModelError::Truncated { received, expected, ref partial, .. } = err else { panic!("{err:?}") };
    assert_eq!((received, expected), ((onnx.len() / 2) as u64, onnx.len() as u64));
    assert_eq!(partial, &partial_of(&spec, cache.path()));
    assert_eq!(std::fs::read(partial).unwrap(), onnx[..onnx.len() / 2]);
    assert!(err.to_string().contains("is kept and the next run resumes from it"), "{err}");
    assert!(!models::fetched_file(&spec, cache.path()).unwrap().exists());
    server.finish();
}

#[test]
fn a_wrong_checksum_deletes_the_file_and_names_both_checksums() {
    let onnx = tiny_onnx();
    let mut corrupted = onnx.clone();
    corrupted[100] ^= 0xff;
    let server = Server::start(vec![Reply::File(corrupted.clone())]);
    let cache = tempfile::tempdir().unwrap();
    let spec = url_spec(&server.base_url, &onnx);

    let err = resolve(&spec, cache.path()).unwrap_err();

    assert!(matches!(err, ModelError::Mismatch { removed: true, .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&spec::sha256_hex(&onnx)) && text.contains(&spec::sha256_hex(&corrupted)), "{text}");
    assert!(text.contains("deleted"), "{text}");
    assert!(!partial_of(&spec, cache.path()).exists());
    assert!(!models::fetched_file(&spec, cache.path()).unwrap().exists());
    server.finish();
}

#[test]
fn a_server_dying_midway_is_resumed_by_the_next_run() {
    let onnx = tiny_onnx();
    let dying = Server::start(vec![Reply::DieAfter { file: onnx.clone(), sent: 1000 }]);
    let cache = tempfile::tempdir().unwrap();
    let spec = url_spec(&dying.base_url, &onnx);

    let err = resolve(&spec, cache.path()).unwrap_err();
    assert!(matches!(err, ModelError::Truncated { .. }), "{err:?}");
    dying.finish();
    let kept = std::fs::metadata(partial_of(&spec, cache.path())).unwrap().len();
    assert!(kept > 0 && kept < onnx.len() as u64, "kept {kept} bytes");

    // A fresh, good server: the rerun asks only for the rest.
    let good = Server::start(vec![Reply::File(onnx.clone())]);
    let spec = url_spec(&good.base_url, &onnx);
    let progress = Recorder::default();
    let resolved = resolve_with_progress(&spec, cache.path(), &progress).unwrap();

    assert_eq!(good.finish(), [Seen { path: "/models/tiny.onnx".into(), range_start: Some(kept) }]);
    assert_eq!(std::fs::read(&resolved.full).unwrap(), onnx);
    assert!(!partial_of(&spec, cache.path()).exists());
    // Progress counts the resumed bytes too, so the bar starts where it stopped.
    assert_eq!(progress.events.lock().unwrap()[1], ("advance".into(), kept));
    assert_eq!(progress.advanced(), onnx.len() as u64);
}

#[test]
fn a_server_ignoring_the_range_restarts_from_the_beginning() {
    let onnx = tiny_onnx();
    let server = Server::start(vec![Reply::FileIgnoringRange(onnx.clone())]);
    let cache = tempfile::tempdir().unwrap();
    let spec = url_spec(&server.base_url, &onnx);
    let partial = partial_of(&spec, cache.path());
    std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
    std::fs::write(&partial, &onnx[..500]).unwrap();

    let resolved = resolve(&spec, cache.path()).unwrap();

    assert_eq!(server.finish()[0].range_start, Some(500));
    assert_eq!(std::fs::read(&resolved.full).unwrap(), onnx);
}

#[test]
fn an_unreachable_server_explains_how_to_place_the_file_by_hand() {
    // A port nobody listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let onnx = tiny_onnx();
    let cache = tempfile::tempdir().unwrap();
    let spec = url_spec(&format!("http://127.0.0.1:{port}"), &onnx);
    let place_at = models::fetched_file(&spec, cache.path()).unwrap();

    let err = resolve(&spec, cache.path()).unwrap_err();

    let ModelError::Unreachable { ref placement, .. } = err else { panic!("{err:?}") };
    assert_eq!(placement.path, place_at);
    let text = err.to_string();
    for needed in [place_at.display().to_string(), spec::sha256_hex(&onnx), format!("{} bytes", onnx.len())] {
        assert!(text.contains(&needed), "{needed} missing from: {text}");
    }

    // A wrong file placed there is refused, and left alone.
    std::fs::write(&place_at, b"not the model").unwrap();
    let err = resolve(&spec, cache.path()).unwrap_err();
    assert!(matches!(err, ModelError::Mismatch { removed: false, .. }), "{err:?}");
    assert!(place_at.exists());

    // The right file placed there is verified and used, still offline.
    std::fs::write(&place_at, &onnx).unwrap();
    let resolved = resolve(&spec, cache.path()).unwrap();
    assert_eq!(resolved.full, place_at);
    assert_eq!(resolved.fingerprint, resolve(&tiny_spec(), cache.path()).unwrap().fingerprint);
}

#[test]
fn two_resolves_of_one_model_at_once_download_it_once_and_both_get_the_verified_file() {
    let onnx = tiny_onnx();
    // One scripted reply: a second download would find no server.
    let server = Server::start(vec![Reply::File(onnx.clone())]);
    let cache = tempfile::tempdir().unwrap();
    let spec = url_spec(&server.base_url, &onnx);
    let file = models::fetched_file(&spec, cache.path()).unwrap();
    let folder = file.parent().unwrap().to_owned();
    std::fs::create_dir_all(folder.join(".pip-download-x.4294967.partial")).unwrap();
    std::fs::write(folder.join(".tiny.onnx.4294967.partial"), b"a killed process's bytes").unwrap();

    // Hold the model's lock as another process would: both resolves wait.
    let lock = cache.path().join("models/.locks/tiny-vgg-download.lock");
    let held = atomic_file::Lock::exclusive(&lock, "test").unwrap();
    let resolves: Vec<_> = (0..2)
        .map(|_| {
            let (spec, cache) = (spec.clone(), cache.path().to_owned());
            std::thread::spawn(move || resolve(&spec, &cache))
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(resolves.iter().all(|r| !r.is_finished()), "a resolve did not wait for the lock");
    drop(held);
    let resolved: Vec<_> = resolves.into_iter().map(|r| r.join().unwrap().unwrap_or_else(|e| panic!("{e}"))).collect();

    assert_eq!(resolved[0], resolved[1]);
    assert_eq!(std::fs::read(&file).unwrap(), onnx);
    assert_eq!(server.finish().len(), 1, "downloaded once");
    let mut names: Vec<String> =
        std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.retain(|n| n.starts_with('.'));
    assert_eq!(names, Vec::<String>::new(), "the lock holder removed the dead process's temporaries");
}
