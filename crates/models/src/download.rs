//! The `url` source: a resumable HTTP(S) download.
//!
//! Bytes go to `<file>.partial` next to the destination. An interrupted
//! download keeps its partial file, and the next run asks the server for
//! the rest (`Range: bytes=N-`); a server that ignores the range answers
//! 200 with the whole file, which then replaces the partial one. Only a
//! complete, verified file is renamed into place.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use progress::Progress;

use crate::store::{self, Expected};
use crate::{ManualPlacement, ModelError};

/// Long enough for a slow mirror, short enough that a dead one is noticed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const CHUNK: usize = 256 * 1024;

/// Downloads `url` to `destination` (resuming a partial download), and
/// verifies and stores it. `size` is the expected length from the spec.
pub(crate) fn download(
    model: &str,
    url: &str,
    expected: &Expected,
    destination: &Path,
    progress: &dyn Progress,
) -> Result<(), ModelError> {
    let size = expected.size.expect("a url source always names its size");
    let partial = partial_path(destination);
    let mut have = std::fs::metadata(&partial).map_or(0, |m| m.len());
    if have > size {
        // Longer than the real file: it cannot be a prefix of it.
        remove(&partial)?;
        have = 0;
    }
    if have < size {
        fetch_rest(model, url, expected, destination, &partial, have, progress)?;
    }
    store::verify_and_store(model, &partial, expected, destination)
}

/// Where an unfinished download of `destination` is kept.
pub(crate) fn partial_path(destination: &Path) -> PathBuf {
    let mut name = destination.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Requests the bytes from `have` on and appends them to `partial`.
fn fetch_rest(
    model: &str,
    url: &str,
    expected: &Expected,
    destination: &Path,
    partial: &Path,
    have: u64,
    progress: &dyn Progress,
) -> Result<(), ModelError> {
    let size = expected.size.unwrap_or_default();
    let mut request = agent().get(url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let response = request.call().map_err(|error| ModelError::Unreachable {
        model: model.to_owned(),
        url: url.to_owned(),
        reason: error.to_string(),
        placement: Box::new(ManualPlacement {
            path: destination.to_owned(),
            sha256: expected.sha256.clone(),
            size: expected.size,
            how_to_get: format!("download {url}"),
        }),
    })?;
    let http_error =
        |status: u16, detail: String| ModelError::Http { model: model.to_owned(), url: url.to_owned(), status, detail };
    let status = response.status();
    let (mut file, start) = match status.as_u16() {
        206 => {
            let content_range = header(&response, "content-range");
            if range_start(&content_range) != Some(have) {
                return Err(http_error(206, format!("asked for bytes {have}- but got range '{content_range}'")));
            }
            (open(partial, true)?, have)
        }
        200 => (open(partial, false)?, 0),
        416 => {
            // The server's file is shorter than what we hold: not our file.
            remove(partial)?;
            return Err(http_error(
                416,
                format!("the server's file is shorter than the {have} bytes already downloaded; the partial file was deleted"),
            ));
        }
        code => return Err(http_error(code, status.canonical_reason().unwrap_or_default().to_owned())),
    };

    progress.start(&format!("download {model}"), size);
    progress.advance(start);
    let copied = copy_at_most(response.into_body().into_reader(), &mut file, size - start, progress);
    progress.finish();
    let (received, stopped_by) = copied.map_err(|source| ModelError::Io { path: partial.to_owned(), source })?;
    let have = start + received;
    if have < size {
        return Err(ModelError::Truncated {
            model: model.to_owned(),
            url: url.to_owned(),
            received: have,
            expected: size,
            reason: stopped_by.unwrap_or_else(|| "the server closed the connection".into()),
            partial: partial.to_owned(),
        });
    }
    Ok(())
}

/// Copies up to `limit + 1` bytes (one more reveals a server sending too
/// much; verification then rejects the size). A failed read ends the copy
/// and is returned as the reason, so the bytes received so far are kept;
/// a failed write is an error.
fn copy_at_most(
    mut body: impl Read,
    file: &mut File,
    limit: u64,
    progress: &dyn Progress,
) -> std::io::Result<(u64, Option<String>)> {
    let mut buffer = vec![0u8; CHUNK];
    let mut received = 0u64;
    let mut stopped_by = None;
    while received <= limit {
        match body.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                file.write_all(&buffer[..n])?;
                received += n as u64;
                progress.advance(n as u64);
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                stopped_by = Some(error.to_string());
                break;
            }
        }
    }
    file.sync_all()?;
    Ok((received, stopped_by))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        // Statuses are answers we explain ourselves (404, 416, ...).
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT))
        .build()
        .into()
}

fn header(response: &ureq::http::Response<ureq::Body>, name: &str) -> String {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` header.
fn range_start(content_range: &str) -> Option<u64> {
    content_range.trim().strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

fn open(partial: &Path, append: bool) -> Result<File, ModelError> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(partial)
        .map_err(|source| ModelError::Io { path: partial.to_owned(), source })
}

fn remove(path: &Path) -> Result<(), ModelError> {
    std::fs::remove_file(path).map_err(|source| ModelError::Io { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_start_is_parsed() {
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_start("bytes */200"), None);
        assert_eq!(range_start(""), None);
    }
}
