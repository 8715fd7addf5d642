//! Static files through a real HTTP client: byte ranges and preconditions
//! as nginx answers them for files (RFC 9110 §13–14: resumed downloads and
//! media seeking with `Range` and `If-Range`, `If-Match` and
//! `If-Unmodified-Since`), and what under the root is not a file to serve.

use crate::common;

use common::*;
use http::StatusCode;

async fn site() -> TestGateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("site");
    std::fs::create_dir_all(&root).expect("mkdir");
    let body: String = (0..1000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    std::fs::write(root.join("big.txt"), body).expect("write");
    // Written a while ago: a date within the current second is no strong
    // validator, so If-Range by date would not serve a range.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(root.join("big.txt"))
        .and_then(|f| f.set_modified(old))
        .expect("set mtime");
    let toml = Cfg::new()
        .listener_plain()
        .route_root("/", "{dir}/site")
        .build();
    TestGateway::start_in(&toml, dir).await
}

async fn ask(gw: &TestGateway, method: &str, headers: &[(&str, &str)]) -> Reply {
    tokio::time::timeout(
        WAIT,
        send(gw.http(), request(method, "/big.txt", headers, "")),
    )
    .await
    .expect("the gateway hung")
}

#[tokio::test]
async fn ranges_resume_and_seek_and_if_range_guards_them() {
    let gw = site().await;
    let whole = ask(&gw, "GET", &[]).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.headers["accept-ranges"], "bytes");
    assert_eq!(whole.body.len(), 1000);
    let etag = whole.headers["etag"].to_str().expect("etag").to_string();
    let date = whole.headers["last-modified"]
        .to_str()
        .expect("date")
        .to_string();

    let r = ask(&gw, "GET", &[("range", "bytes=10-19")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers["content-range"], "bytes 10-19/1000");
    assert_eq!(r.headers["content-length"], "10");
    assert_eq!(r.body, whole.body.slice(10..20));
    let r = ask(&gw, "GET", &[("range", "bytes=-5")]).await;
    assert_eq!(r.headers["content-range"], "bytes 995-999/1000");
    assert_eq!(r.body, whole.body.slice(995..));
    let r = ask(&gw, "GET", &[("range", "bytes=990-")]).await;
    assert_eq!(r.body, whole.body.slice(990..));

    // Resuming: the range only if the file is still the same one.
    let r = ask(&gw, "GET", &[("range", "bytes=500-"), ("if-range", &etag)]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    let r = ask(&gw, "GET", &[("range", "bytes=500-"), ("if-range", &date)]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    let stale = ask(
        &gw,
        "GET",
        &[("range", "bytes=500-"), ("if-range", "\"old\"")],
    )
    .await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.body.len(), 1000);

    let r = ask(&gw, "GET", &[("range", "bytes=1000-")]).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers["content-range"], "bytes */1000");
    // Several ranges, or a HEAD: the whole file.
    let r = ask(&gw, "GET", &[("range", "bytes=0-1,5-6")]).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = ask(&gw, "HEAD", &[("range", "bytes=0-1")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-length"], "1000");
}

/// `file/` is not the file: nginx answers 404 (its `open` fails with
/// ENOTDIR), and one document under two URLs breaks relative links.
#[tokio::test]
async fn a_file_with_a_trailing_slash_is_not_found() {
    let gw = site().await;
    let r = tokio::time::timeout(WAIT, get(gw.http(), "/big.txt/"))
        .await
        .expect("the gateway hung");
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn failed_preconditions_are_412() {
    let gw = site().await;
    let etag = ask(&gw, "HEAD", &[]).await.headers["etag"].clone();
    let etag = etag.to_str().expect("etag");
    assert_eq!(
        ask(&gw, "GET", &[("if-match", etag)]).await.status,
        StatusCode::OK
    );
    let r = ask(&gw, "GET", &[("if-match", "\"other\"")]).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let long_ago = "Sun, 06 Nov 1994 08:49:37 GMT";
    let r = ask(&gw, "GET", &[("if-unmodified-since", long_ago)]).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    // A date in the future is not valid: the file, not a 304.
    let future = "Fri, 01 Jan 2100 00:00:00 GMT";
    let r = ask(&gw, "GET", &[("if-modified-since", future)]).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// A FIFO under the root is not served, and opening it holds nothing: a
/// blocking open would wait for a writer forever, one blocking thread per
/// request.
#[tokio::test]
async fn a_fifo_under_the_root_is_not_found_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("site");
    std::fs::create_dir_all(&root).expect("mkdir");
    let fifo = root.join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let toml = Cfg::new()
        .listener_plain()
        .route_root("/", "{dir}/site")
        .build();
    let gw = TestGateway::start_in(&toml, dir).await;
    for _ in 0..3 {
        let r = tokio::time::timeout(WAIT, get(gw.http(), "/pipe"))
            .await
            .expect("the open of a FIFO hung");
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
}
