//! The static files of the web UI, embedded in the binary: style sheet, script, the web app
//! manifest and its icons (so the UI can be added to a phone's home screen). All are public
//! (`/static/…` and `/favicon.ico`, see `auth::PUBLIC_PATHS`): browsers fetch the manifest and
//! icons without credentials.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file.
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
    /// `Cache-Control` max-age, seconds.
    pub max_age: u32,
}

/// Everything served under `/static/`.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/static/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../static/style.css"),
        max_age: 3600,
    },
    Asset {
        path: "/static/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../static/app.js"),
        max_age: 3600,
    },
    Asset {
        path: "/static/manifest.webmanifest",
        content_type: "application/manifest+json",
        body: include_bytes!("../../static/manifest.webmanifest"),
        max_age: 86_400,
    },
    Asset {
        path: "/static/icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../static/icon.svg"),
        max_age: 604_800,
    },
    Asset {
        path: "/static/icon-192.png",
        content_type: "image/png",
        body: include_bytes!("../../static/icon-192.png"),
        max_age: 604_800,
    },
    Asset {
        path: "/static/icon-512.png",
        content_type: "image/png",
        body: include_bytes!("../../static/icon-512.png"),
        max_age: 604_800,
    },
    Asset {
        path: "/static/apple-touch-icon.png",
        content_type: "image/png",
        body: include_bytes!("../../static/apple-touch-icon.png"),
        max_age: 604_800,
    },
];

fn respond(a: &'static Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, a.content_type.to_string()),
            (
                header::CACHE_CONTROL,
                format!("public, max-age={}", a.max_age),
            ),
        ],
        a.body,
    )
        .into_response()
}

/// What browsers fetch on their own as `/favicon.ico`: the app's icon (a PNG; every browser
/// takes a PNG there).
pub const FAVICON: &str = "/static/icon-192.png";

/// A route for every asset, and `/favicon.ico`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let routes = ASSETS.iter().fold(Router::new(), |r, a| {
        r.route(a.path, get(move || async move { respond(a) }))
    });
    match ASSETS.iter().find(|a| a.path == FAVICON) {
        Some(icon) => routes.route("/favicon.ico", get(move || async move { respond(icon) })),
        None => routes,
    }
}
