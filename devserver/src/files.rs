//! `GET /files/{path}`: the files of a directory, as a web server publishes update manifests and
//! bundles (`--files DIR`). Byte ranges (`Range: bytes=N-` or `bytes=N-M`) answer 206, so a
//! device's interrupted download can resume; anything else about HTTP caching is left out.

use std::io::SeekFrom;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

/// The router serving `dir`.
pub fn router(dir: PathBuf) -> Router {
    Router::new()
        .route("/files/{*path}", get(serve))
        .with_state(Arc::new(dir))
}

/// `rel` inside `dir`, or None when it tries to leave it.
fn inside(dir: &Path, rel: &str) -> Option<PathBuf> {
    let rel = Path::new(rel);
    rel.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| dir.join(rel))
}

/// The range asked for in a file of `len` bytes: Ok(None) for all of it, Err for one that cannot
/// be served (416).
fn range(headers: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let spec = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("bytes="))
        .ok_or(())?;
    let (start, end) = spec.split_once('-').ok_or(())?;
    let start: u64 = start.parse().map_err(|_| ())?;
    let end: u64 = if end.is_empty() {
        len.saturating_sub(1)
    } else {
        end.parse::<u64>()
            .map_err(|_| ())?
            .min(len.saturating_sub(1))
    };
    if start >= len || end < start {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn serve(
    State(dir): State<Arc<PathBuf>>,
    UrlPath(rel): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let Some(path) = inside(&dir, &rel) else {
        return (StatusCode::NOT_FOUND, "Not found.").into_response();
    };
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        return (StatusCode::NOT_FOUND, "Not found.").into_response();
    };
    let len = match file.metadata().await {
        Ok(m) if m.is_file() => m.len(),
        _ => return (StatusCode::NOT_FOUND, "Not found.").into_response(),
    };
    let (status, start, end) = match range(&headers, len) {
        Ok(None) => (StatusCode::OK, 0, len.saturating_sub(1)),
        Ok(Some((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e),
        Err(()) => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response();
        }
    };
    let count = if len == 0 { 0 } else { end - start + 1 };
    if file.seek(SeekFrom::Start(start)).await.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    // Streamed in 1 MiB pieces: bundles are hundreds of MiB.
    let body = futures_util::stream::unfold((file, count), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; usize::try_from(left.min(1 << 20)).unwrap_or(1 << 20)];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), (file, left - n as u64)))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, count.into());
    h.insert(
        header::ACCEPT_RANGES,
        header::HeaderValue::from_static("bytes"),
    );
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = format!("bytes {start}-{end}/{len}").parse()
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_directory() {
        let dir = Path::new("/srv/files");
        assert_eq!(
            inside(dir, "a/manifest.json"),
            Some(PathBuf::from("/srv/files/a/manifest.json"))
        );
        assert_eq!(inside(dir, "../etc/passwd"), None);
        assert_eq!(inside(dir, "/etc/passwd"), None);
    }

    #[test]
    fn ranges_are_read_and_bounded() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::RANGE, v.parse().unwrap());
            h
        };
        assert_eq!(range(&HeaderMap::new(), 10), Ok(None));
        assert_eq!(range(&with("bytes=4-"), 10), Ok(Some((4, 9))));
        assert_eq!(range(&with("bytes=2-5"), 10), Ok(Some((2, 5))));
        assert_eq!(range(&with("bytes=2-50"), 10), Ok(Some((2, 9))));
        assert_eq!(range(&with("bytes=10-"), 10), Err(()));
        assert_eq!(range(&with("items=1-"), 10), Err(()));
    }
}
