//! What the browser needs besides the pages, against the real gateway: the web app manifest and
//! its icons (public, cached, the sizes they claim), the links to them in every page, gzip on
//! text answers, and an SSE stream that is never compressed (it must not be buffered).

use printgate::config::Config;
use printgate::web::auth;
use reqwest::header;
use tokio_util::sync::CancellationToken;

async fn start() -> (printgate::RunningGateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = '{}'\n[web]\nlisten = \"127.0.0.1:0\"\n[broker]\nmode = \"off\"\n",
        dir.path().display()
    );
    let config = Config::parse_toml(&text, "test").unwrap();
    let running = printgate::start(config, CancellationToken::new())
        .await
        .unwrap();
    auth::ensure_demo_account(&running.gateway.store).unwrap();
    (running, dir)
}

fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
    (w, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_and_icons_are_public_and_linked_from_every_page() {
    let (running, _dir) = start().await;
    let base = format!("http://{}", running.web_addr);
    // No credentials at all: browsers fetch the manifest without cookies.
    let http = reqwest::Client::new();

    let resp = http
        .get(format!("{base}/static/manifest.webmanifest"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "application/manifest+json"
    );
    assert!(
        resp.headers()[header::CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("max-age")
    );
    let manifest: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(manifest["start_url"], "/");
    assert_eq!(manifest["display"], "standalone");
    let icons = manifest["icons"].as_array().unwrap();
    let mut sizes = Vec::new();
    for icon in icons {
        let src = icon["src"].as_str().unwrap();
        let resp = http.get(format!("{base}{src}")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{src}");
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE].to_str().unwrap(),
            icon["type"].as_str().unwrap(),
            "{src}"
        );
        let body = resp.bytes().await.unwrap();
        if icon["type"] == "image/png" {
            let (w, h) = png_size(&body);
            assert_eq!(icon["sizes"], format!("{w}x{h}"), "{src}");
            sizes.push(w);
        } else {
            assert!(body.starts_with(b"<svg"), "{src}");
        }
    }
    assert!(
        sizes.contains(&192) && sizes.contains(&512),
        "192 and 512 px icons: {sizes:?}"
    );
    let touch = http
        .get(format!("{base}/static/apple-touch-icon.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(png_size(&touch.bytes().await.unwrap()), (180, 180));

    // The sign-in page (public) and the dashboard both link them.
    let login = http
        .get(format!("{base}/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dashboard = http
        .get(format!("{base}/"))
        .header(auth::API_KEY_HEADER, auth::DEMO_API_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for page in [&login, &dashboard] {
        for needle in [
            r#"<link rel="manifest" href="/static/manifest.webmanifest">"#,
            r#"<link rel="apple-touch-icon" href="/static/apple-touch-icon.png">"#,
            r#"<meta name="theme-color""#,
        ] {
            assert!(page.contains(needle), "{needle} missing");
        }
    }
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_is_gzipped_but_the_event_stream_is_not() {
    let (running, _dir) = start().await;
    let base = format!("http://{}", running.web_addr);
    // reqwest is built without decompression: the headers are what the server sent.
    let http = reqwest::Client::new();
    for path in [
        "/static/style.css",
        "/static/app.js",
        "/",
        "/api/v1/printers",
    ] {
        let resp = http
            .get(format!("{base}{path}"))
            .header(auth::API_KEY_HEADER, auth::DEMO_API_TOKEN)
            .header(header::ACCEPT_ENCODING, "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        if path != "/api/v1/printers" {
            // An empty printer list is too small to be worth compressing.
            assert_eq!(
                resp.headers().get(header::CONTENT_ENCODING).unwrap(),
                "gzip",
                "{path}"
            );
        }
    }
    let resp = http
        .get(format!("{base}/static/icon-512.png"))
        .header(header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get(header::CONTENT_ENCODING).is_none());

    let mut live = http
        .get(format!("{base}/live"))
        .header(auth::API_KEY_HEADER, auth::DEMO_API_TOKEN)
        .header(header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    assert!(
        live.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(live.headers().get(header::CONTENT_ENCODING).is_none());
    // The first message arrives as it is sent (nothing holds it back to fill a gzip block).
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), live.chunk())
        .await
        .expect("the first SSE message arrives promptly")
        .unwrap()
        .expect("a chunk");
    let text = String::from_utf8_lossy(&first);
    assert!(text.contains("event: state"), "{text}");
    drop(live);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_may_be_framed_and_the_favicon_needs_no_login() {
    let (running, _dir) = start().await;
    let base = format!("http://{}", running.web_addr);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Pages, API answers, assets, the guard's own redirects and refusals, unknown paths.
    let requests = [
        ("/", true),
        ("/history", true),
        ("/upload", true),
        ("/safety", true),
        ("/settings/tokens", true),
        ("/api/v1/printers", true),
        ("/static/style.css", false),
        ("/login", false),
        ("/", false),
        ("/api/v1/printers", false),
        ("/no-such-page", true),
    ];
    for (path, signed_in) in requests {
        let mut req = http.get(format!("{base}{path}"));
        if signed_in {
            req = req.header(auth::API_KEY_HEADER, auth::DEMO_API_TOKEN);
        }
        let resp = req.send().await.unwrap();
        let what = format!("{path} (signed in: {signed_in}, {})", resp.status());
        assert_eq!(
            resp.headers()
                .get(header::X_FRAME_OPTIONS)
                .map(|v| v.to_str().unwrap()),
            Some("DENY"),
            "{what}"
        );
        let csp = resp
            .headers()
            .get(header::CONTENT_SECURITY_POLICY)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp:?}");
    }

    // Browsers ask for /favicon.ico on their own, without credentials.
    let resp = http
        .get(format!("{base}/favicon.ico"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "image/png");
    let icon = resp.bytes().await.unwrap();
    assert_eq!(png_size(&icon), (192, 192));
    // A stale or wrong API key from a browser extension does not turn it into a 401 either.
    let resp = http
        .get(format!("{base}/favicon.ico"))
        .header(auth::API_KEY_HEADER, "not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    running.shutdown().await;
}
