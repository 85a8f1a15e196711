//! A minimal HTTP/1.0 client: enough to fetch one signed document from an authority (`GET`)
//! and to upload a descriptor to one (`POST`, [`post`]).
//!
//! HTTP/1.0 because its answers are plain (servers may not use chunked encoding with it, and
//! close the connection after the body), so the response is the head, then the body up to
//! `Content-Length` or the end of the stream.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::source::FetchError;

/// Largest directory accepted over HTTP (4096 relays of under 500 bytes, plus signatures).
pub const MAX_DIRECTORY_BYTES: usize = 4 << 20;
/// The whole exchange (connect, request, answer) must finish within this.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest status line plus headers accepted.
const MAX_HEAD_BYTES: usize = 16 << 10;

/// Splits `http://host:port/path` into (`host:port`, `/path`).
pub(crate) fn parse_http_url(url: &str) -> Result<(String, String), FetchError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| FetchError::Http(format!("{url}: only http:// URLs are supported")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(FetchError::Http(format!("{url}: no host")));
    }
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_owned()))
}

fn request(authority: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: */*\r\n\r\n").into_bytes()
}

/// An authority's answer: status, its clock (the `Date` header) and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    /// The `Date` header as Unix seconds, if present and in the standard (IMF-fixdate) form.
    pub date_unix: Option<u64>,
    pub body: Vec<u8>,
}

/// The body of a complete response, `None` for 404 and 503 (no directory yet).
pub(crate) fn parse_response(raw: &[u8]) -> Result<Option<Vec<u8>>, FetchError> {
    let answer = parse_answer(raw)?;
    if answer.status == 503 || answer.status == 404 {
        return Ok(None);
    }
    if !(200..300).contains(&answer.status) {
        return Err(FetchError::Http(format!(
            "authority answered {}",
            answer.status
        )));
    }
    Ok(Some(answer.body))
}

/// Parses `Sun, 06 Nov 1994 08:49:37 GMT` (the one form HTTP servers must send) to Unix
/// seconds.
pub fn parse_http_date(s: &str) -> Option<u64> {
    let mut parts = s.split_whitespace();
    let _weekday = parts.next()?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::try_from(day).ok()? - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

/// Unix seconds as an HTTP `Date` (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn format_http_date(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS.get(usize::try_from(days % 7).unwrap_or(0))
            .unwrap_or(&"Thu"),
        day,
        MONTHS
            .get(usize::try_from(month - 1).unwrap_or(0))
            .unwrap_or(&"Jan"),
        year,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Status, date and body of a complete response.
fn parse_answer(raw: &[u8]) -> Result<HttpAnswer, FetchError> {
    let bad = |what: &str| FetchError::Http(format!("authority's answer: {what}"));
    let head_end = raw
        .windows(4)
        .take(MAX_HEAD_BYTES)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no complete response head"))?;
    let head = std::str::from_utf8(raw.get(..head_end).unwrap_or_default())
        .map_err(|_| bad("response head is not text"))?;
    let mut lines = head.split("\r\n");
    let mut status_line = lines.next().unwrap_or_default().split_whitespace();
    if !status_line.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(bad("not an HTTP/1 response"));
    }
    let status: u16 = status_line
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let mut content_length = None;
    let mut date_unix = None;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad("malformed header"))?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| bad("malformed Content-Length"))?,
            );
        } else if name.eq_ignore_ascii_case("date") {
            date_unix = parse_http_date(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && !value.eq_ignore_ascii_case("identity")
        {
            return Err(bad("transfer encoding in answer to HTTP/1.0"));
        }
    }
    let mut body = raw.get(head_end + 4..).unwrap_or_default().to_vec();
    if let Some(n) = content_length {
        if body.len() < n {
            return Err(bad("body is shorter than its Content-Length"));
        }
        body.truncate(n);
    }
    if body.len() > MAX_DIRECTORY_BYTES {
        return Err(FetchError::Http(format!(
            "directory body: longer than {MAX_DIRECTORY_BYTES} bytes"
        )));
    }
    Ok(HttpAnswer {
        status,
        date_unix,
        body,
    })
}

/// Fetches `url`; `None` if the authority has no directory yet.
pub(crate) async fn get(url: &str) -> Result<Option<Vec<u8>>, FetchError> {
    let (authority, path) = parse_http_url(url)?;
    parse_response(&exchange(&authority, request(&authority, &path)).await?)
}

/// `POST`s `body` to `url` and returns the answer whatever its status (an upload's refusal
/// carries the reason in its body).
pub async fn post(url: &str, body: &[u8]) -> Result<HttpAnswer, FetchError> {
    let (authority, path) = parse_http_url(url)?;
    let mut req = format!(
        "POST {path} HTTP/1.0\r\nHost: {authority}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    parse_answer(&exchange(&authority, req).await?)
}

/// `GET`s `url` and returns the answer whatever its status.
pub async fn get_answer(url: &str) -> Result<HttpAnswer, FetchError> {
    let (authority, path) = parse_http_url(url)?;
    parse_answer(&exchange(&authority, request(&authority, &path)).await?)
}

/// Sends `req` and reads the whole answer (the server closes after it: HTTP/1.0).
async fn exchange(authority: &str, req: Vec<u8>) -> Result<Vec<u8>, FetchError> {
    let io = |e: std::io::Error| FetchError::Http(format!("{authority}: {e}"));
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(io)?;
        stream.write_all(&req).await.map_err(io)?;
        let mut raw = Vec::new();
        // One byte over the limit tells a too-long answer from one exactly at it.
        let limit = MAX_HEAD_BYTES + MAX_DIRECTORY_BYTES + 1;
        (&mut stream)
            .take(limit as u64)
            .read_to_end(&mut raw)
            .await
            .map_err(io)?;
        Ok(raw)
    };
    tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| FetchError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:8080/directory").expect("ok"),
            ("127.0.0.1:8080".into(), "/directory".into())
        );
        assert_eq!(
            parse_http_url("http://dir.example").expect("ok"),
            ("dir.example:80".into(), "/".into())
        );
        assert!(parse_http_url("https://dir.example/").is_err());
        assert!(parse_http_url("http:///x").is_err());
    }

    #[test]
    fn responses() {
        assert_eq!(
            parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\ndocXX").unwrap(),
            Some(b"doc".to_vec())
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\ndoc").unwrap(),
            Some(b"doc".to_vec())
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\nno directory yet").unwrap(),
            None
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap(),
            None
        );
        for bad in [
            &b"HTTP/1.1 500 Internal Server Error\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\ndoc",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ndoc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n",
            b"SSH-2.0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut big = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
        big.resize(big.len() + MAX_DIRECTORY_BYTES + 1, 0);
        assert!(parse_response(&big).is_err(), "over the limit");
    }

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Sat, 05 Dec 2026 04:24:39 GMT"),
            Some(1_796_444_679)
        );
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(
            format_http_date(784_111_777),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        for t in [0, 951_782_400, 1_796_444_679, 4_102_444_800] {
            assert_eq!(parse_http_date(&format_http_date(t)), Some(t));
        }
        let a = parse_answer(
            b"HTTP/1.1 400 Bad Request\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\nwhy",
        )
        .unwrap();
        assert_eq!(
            (a.status, a.date_unix, a.body),
            (400, Some(784_111_777), b"why".to_vec())
        );
    }

    #[tokio::test]
    async fn fetches_over_a_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let answer: &[u8] = if req.starts_with("GET /directory HTTP/1.0\r\n") {
                    b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\ndoc"
                } else {
                    b"HTTP/1.0 404 Not Found\r\n\r\n"
                };
                let _ = s.write_all(answer).await;
            }
        });
        assert_eq!(
            get(&format!("http://{addr}/directory")).await.unwrap(),
            Some(b"doc".to_vec())
        );
        assert_eq!(get(&format!("http://{addr}/other")).await.unwrap(), None);
    }
}
