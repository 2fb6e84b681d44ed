//! Getting a day's settlement file onto local disk (an operator's file, the drop directory, or a
//! streamed download from the PSP) and reading it line by line in bounded memory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use paystream_common::settlement::LINE_BYTES_MAX;
use paystream_common::text::error_chain;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt};

use crate::ReconError;

/// Largest settlement file accepted, in bytes (a million rows is about 130 MB).
pub const FILE_BYTES_MAX: u64 = 4 << 30;
/// Longest wait for the next piece of a download.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

/// The drop-directory file of `date`, if one is there.
pub fn dropped(drop_dir: Option<&Path>, date: &str) -> Option<PathBuf> {
    let path = drop_dir?.join(format!("{date}.csv"));
    path.is_file().then_some(path)
}

/// Streams `GET {psp_url}/v1/settlements/{date}` into `<dir>/settlement-<date>.csv` (written
/// under a temporary name, renamed when complete), one network chunk at a time.
pub async fn download(
    http: &reqwest::Client,
    psp_url: &str,
    api_key: Option<&str>,
    date: &str,
    dir: &Path,
) -> Result<PathBuf, ReconError> {
    let url = format!("{}/v1/settlements/{date}", psp_url.trim_end_matches('/'));
    let fail = |e: String| ReconError::Fetch(format!("{url}: {e}"));
    let mut req = http.get(&url);
    if let Some(key) = api_key {
        req = req.bearer_auth(key);
    }
    let mut resp = req.send().await.map_err(|e| fail(error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(fail(format!("HTTP {}", resp.status())));
    }
    tokio::fs::create_dir_all(dir).await?;
    let path = dir.join(format!("settlement-{date}.csv"));
    let part = dir.join(format!("settlement-{date}.csv.part"));
    let mut out = tokio::fs::File::create(&part).await?;
    let mut written: u64 = 0;
    loop {
        let chunk = tokio::time::timeout(CHUNK_TIMEOUT, resp.chunk())
            .await
            .map_err(|_| fail(format!("no data for {CHUNK_TIMEOUT:?}")))?
            .map_err(|e| fail(error_chain(&e)))?;
        let Some(chunk) = chunk else { break };
        written += chunk.len() as u64;
        if written > FILE_BYTES_MAX {
            return Err(fail(format!("file larger than {FILE_BYTES_MAX} bytes")));
        }
        out.write_all(&chunk).await?;
    }
    out.flush().await?;
    out.sync_all().await?;
    drop(out);
    tokio::fs::rename(&part, &path).await?;
    Ok(path)
}

/// One line of the file: its text, or why it could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Text(String),
    TooLong,
    NotUtf8,
}

/// Reads the next line without its line break, holding at most `LINE_BYTES_MAX` bytes of it
/// (the rest of a longer line is skipped). `None` at the end of the file.
pub async fn next_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Line>> {
    buf.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            break;
        }
        any = true;
        let (take, end) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        let content = if end { take - 1 } else { take };
        let room = (LINE_BYTES_MAX + 1).saturating_sub(buf.len());
        if content > room {
            too_long = true;
        }
        buf.extend_from_slice(&avail[..content.min(room)]);
        r.consume(take);
        if end {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    if too_long || buf.len() > LINE_BYTES_MAX {
        return Ok(Some(Line::TooLong));
    }
    Ok(Some(match std::str::from_utf8(buf) {
        Ok(s) => Line::Text(s.to_owned()),
        Err(_) => Line::NotUtf8,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_download_says_why() {
        paystream_common::tls::install_crypto_provider();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let err = download(
            &reqwest::Client::new(),
            &url,
            None,
            "2026-11-30",
            dir.path(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(&format!(
                "fetching the settlement file: {url}/v1/settlements/2026-11-30: "
            )),
            "{err}"
        );
        assert!(err.to_lowercase().contains("refused"), "the cause: {err}");
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        let long = "x".repeat(LINE_BYTES_MAX + 10);
        let mut bytes = format!("a\r\n{long}\nb\n").into_bytes();
        bytes.extend_from_slice(b"\xff\nc");
        let mut r = tokio::io::BufReader::with_capacity(7, bytes.as_slice());
        let mut buf = Vec::new();
        let mut lines = Vec::new();
        while let Some(l) = next_line(&mut r, &mut buf).await.unwrap() {
            lines.push(l);
        }
        assert_eq!(
            lines,
            vec![
                Line::Text("a".into()),
                Line::TooLong,
                Line::Text("b".into()),
                Line::NotUtf8,
                Line::Text("c".into()),
            ]
        );
    }
}
