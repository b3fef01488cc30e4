//! The bundle's download: to a `.part` file on the state partition, resumed where it stopped (a
//! power cut, a dropped connection) with an HTTP range request, and kept only when its size and
//! SHA-256 are the manifest's.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use reqwest::{StatusCode, header};
use tracing::info;

use super::manifest::Offer;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("downloading {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("downloading {url}: the server answered {status}")]
    Status { url: String, status: StatusCode },
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error(
        "downloading {url}: the server sent {got} bytes where the manifest says {want}; the download is discarded"
    )]
    Size { url: String, got: u64, want: u64 },
    #[error(
        "downloading {url}: its SHA-256 is {got}, the manifest says {want}; the download is discarded"
    )]
    Digest {
        url: String,
        got: String,
        want: String,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError {
    let path = path.to_owned();
    move |source| DownloadError::Io {
        path,
        action,
        source,
    }
}

/// Have the bundle `offer` names at `dest`: downloaded, or resumed from `dest`.part.
pub async fn fetch(
    http: &reqwest::Client,
    offer: &Offer,
    dest: &Path,
) -> Result<(), DownloadError> {
    if dest.is_file() && sha256_of(dest)? == offer.sha256 {
        return Ok(());
    }
    let part = dest.with_extension("part");
    let mut have = std::fs::metadata(&part).map_or(0, |m| m.len());
    if have > offer.size {
        have = 0;
    }
    if have < offer.size {
        have = receive(http, offer, &part, have).await?;
    }
    if have != offer.size {
        let _ = std::fs::remove_file(&part);
        return Err(DownloadError::Size {
            url: offer.url.to_string(),
            got: have,
            want: offer.size,
        });
    }
    let got = sha256_of(&part)?;
    if got != offer.sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(DownloadError::Digest {
            url: offer.url.to_string(),
            got,
            want: offer.sha256.clone(),
        });
    }
    std::fs::rename(&part, dest).map_err(io("rename into place", dest))
}

/// Append the rest of the bundle to `part`, which holds its first `have` bytes; the bytes held
/// after.
async fn receive(
    http: &reqwest::Client,
    offer: &Offer,
    part: &Path,
    mut have: u64,
) -> Result<u64, DownloadError> {
    let url = &offer.url;
    let http_err = |source| DownloadError::Http {
        url: url.to_string(),
        source,
    };
    let mut request = http.get(url.clone());
    if have > 0 {
        request = request.header(header::RANGE, format!("bytes={have}-"));
    }
    let mut response = request.send().await.map_err(http_err)?;
    let status = response.status();
    let append = match status {
        StatusCode::PARTIAL_CONTENT if have > 0 => true,
        // A server that ignores ranges sends it all again.
        StatusCode::OK => false,
        status => {
            return Err(DownloadError::Status {
                url: url.to_string(),
                status,
            });
        }
    };
    if append {
        info!(url = %url, from = have, "resuming the update's download");
    } else {
        have = 0;
        info!(url = %url, bytes = offer.size, "downloading the update");
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(part)
        .map_err(io("open", part))?;
    let mut logged = have * 10 / offer.size;
    while let Some(chunk) = response.chunk().await.map_err(http_err)? {
        have += chunk.len() as u64;
        if have > offer.size {
            // A server that sends more than announced is not serving the bundle.
            drop(file);
            let _ = std::fs::remove_file(part);
            return Err(DownloadError::Size {
                url: url.to_string(),
                got: have,
                want: offer.size,
            });
        }
        file.write_all(&chunk).map_err(io("write", part))?;
        let tenth = have * 10 / offer.size;
        if tenth > logged {
            logged = tenth;
            info!(
                version = %offer.version,
                percent = tenth * 10,
                mib = have >> 20,
                "downloading the update"
            );
        }
    }
    file.sync_all().map_err(io("fsync", part))?;
    Ok(have)
}

/// The file's SHA-256, lower-case hex.
pub fn sha256_of(path: &Path) -> Result<String, DownloadError> {
    let mut file = std::fs::File::open(path).map_err(io("open", path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish()))
}
