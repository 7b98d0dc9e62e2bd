//! Helpers shared by the test crates in this folder: a local HTTP server
//! and generated stand-ins for downloaded models. Each test crate uses a
//! part of them, hence the crate-wide allow.
#![allow(dead_code)]

pub mod stand_in;

pub mod server {
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
