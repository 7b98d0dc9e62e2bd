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

mod server {
    //! A minimal HTTP/1.1 server on 127.0.0.1: one scripted reply per
    //! connection, in order, then it stops. Every wait is bounded, so a test
    //! that never connects does not hang the server thread for long.

    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    const ACCEPT_DEADLINE: Duration = Duration::from_secs(20);
    const MAX_HEADER_BYTES: usize = 16 * 1024;

    /// What the server does with one request.
    #[derive(Clone)]
    pub enum Reply {
        /// The file, honouring `Range: bytes=N-` with 206.
        File(Vec<u8>),
        /// The whole file with 200, whatever range was asked for.
        FileIgnoringRange(Vec<u8>),
        /// Announces the file (with its length) like `File`, sends the
        /// first `sent` bytes of the body, then drops the connection.
        DieAfter {
            file: Vec<u8>,
            sent: usize,
        },
        /// A 200 without a length (the body ends when the connection
        /// closes) that closes after `sent` bytes.
        CloseAfter {
            file: Vec<u8>,
            sent: usize,
        },
        NotFound,
    }

    /// A request as the server saw it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Seen {
        pub path: String,
        /// N from `Range: bytes=N-`.
        pub range_start: Option<u64>,
    }

    pub struct Server {
        pub base_url: String,
        seen: Arc<Mutex<Vec<Seen>>>,
        thread: JoinHandle<()>,
    }

    impl Server {
        pub fn start(replies: Vec<Reply>) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let base_url = format!("http://{}", listener.local_addr().unwrap());
            let seen = Arc::new(Mutex::new(Vec::new()));
            let recorded = Arc::clone(&seen);
            let thread = std::thread::spawn(move || {
                for reply in replies {
                    let Some(stream) = accept_before(&listener, Instant::now() + ACCEPT_DEADLINE) else { return };
                    serve(stream, &reply, &recorded);
                }
            });
            Server { base_url, seen, thread }
        }

        /// Waits until every scripted reply has been given (or the
        /// deadline passed), then returns the requests seen.
        pub fn finish(self) -> Vec<Seen> {
            self.thread.join().unwrap();
            self.seen.lock().unwrap().clone()
        }
    }

    fn accept_before(listener: &TcpListener, deadline: Instant) -> Option<TcpStream> {
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((stream, _)) => return Some(stream),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("accept: {e}"),
            }
        }
        None
    }

    fn serve(mut stream: TcpStream, reply: &Reply, seen: &Mutex<Vec<Seen>>) {
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let Some(request) = read_head(&mut stream) else { return };
        seen.lock().unwrap().push(request.clone());

        let (head, body): (String, &[u8]) = match reply {
            Reply::File(file) | Reply::DieAfter { file, .. } => ranged(file, request.range_start),
            Reply::FileIgnoringRange(file) => (head(200, "OK", &[("Content-Length", file.len().to_string())]), file),
            Reply::CloseAfter { file, .. } => (head(200, "OK", &[]), file),
            Reply::NotFound => (head(404, "Not Found", &[("Content-Length", "0".into())]), &[]),
        };
        let sent = match reply {
            Reply::DieAfter { sent, .. } | Reply::CloseAfter { sent, .. } => (*sent).min(body.len()),
            _ => body.len(),
        };
        // The client may hang up early (it does, on a wrong length); that is its right.
        let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body[..sent]));
        let _ = stream.flush();
        let _ = stream.shutdown(Shutdown::Both);
    }

    fn ranged(file: &[u8], range_start: Option<u64>) -> (String, &[u8]) {
        let total = file.len();
        match range_start.map(|start| start as usize) {
            None => (head(200, "OK", &[("Content-Length", total.to_string())]), file),
            Some(start) if start < total => {
                let headers = [
                    ("Content-Length", (total - start).to_string()),
                    ("Content-Range", format!("bytes {start}-{}/{total}", total - 1)),
                ];
                (head(206, "Partial Content", &headers), &file[start..])
            }
            Some(_) => {
                let headers = [("Content-Length", "0".into()), ("Content-Range", format!("bytes */{total}"))];
                (head(416, "Range Not Satisfiable", &headers), &[])
            }
        }
    }

    fn head(status: u16, reason: &str, headers: &[(&str, String)]) -> String {
        let mut text = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        text
    }

    /// Reads the request line and headers (the client sends no body).
    fn read_head(stream: &mut TcpStream) -> Option<Seen> {
        let mut bytes = Vec::new();
        let mut buffer = [0u8; 1024];
        while !bytes.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buffer).ok().filter(|&n| n > 0)?;
            bytes.extend_from_slice(&buffer[..n]);
            if bytes.len() > MAX_HEADER_BYTES {
                return None;
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        let mut lines = text.split("\r\n");
        let path = lines.next()?.split(' ').nth(1)?.to_owned();
        let range_start = lines
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("range"))
            .and_then(|(_, value)| value.trim().strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok());
        Some(Seen { path, range_start })
    }
}

use server::{Reply, Seen, Server};

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
