//! The answer to a form that a page posts (stop, pause, cancel, reorder, plate clear, …): every
//! action says what it did or why it was refused, never nothing.
//!
//! Without JavaScript the post redirects back to the page with the message in the query
//! (`?notice=…`, plus `&refused=1` when nothing was done), and the page shows it at the top. The
//! page's script posts the same form with `Accept: application/json` and gets
//! `{"done": bool, "message": "…"}` instead (status 200 when done, the refusal's status
//! otherwise), which it shows next to the control.

use super::ApiError;
use axum::Json;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

/// What a form's action came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormOutcome {
    pub done: bool,
    pub status: StatusCode,
    pub message: String,
}

impl FormOutcome {
    pub fn done(message: impl Into<String>) -> Self {
        FormOutcome {
            done: true,
            status: StatusCode::OK,
            message: message.into(),
        }
    }
    pub fn refused(status: StatusCode, message: impl Into<String>) -> Self {
        FormOutcome {
            done: false,
            status,
            message: message.into(),
        }
    }
}

impl From<ApiError> for FormOutcome {
    fn from(e: ApiError) -> Self {
        FormOutcome::refused(e.status, e.message)
    }
}

/// Whether the page's script asked for the JSON answer.
fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json") && !a.contains("text/html"))
}

/// Answer a form post: JSON for the page's script, else a redirect to `back` (a path without a
/// query) carrying the message.
pub fn answer(headers: &HeaderMap, back: &str, outcome: FormOutcome) -> Response {
    if wants_json(headers) {
        let body = serde_json::json!({ "done": outcome.done, "message": outcome.message });
        return (outcome.status, Json(body)).into_response();
    }
    redirect(back, &outcome)
}

/// The redirect back to `back` with the outcome's message (pages without JavaScript).
pub fn redirect(back: &str, outcome: &FormOutcome) -> Response {
    let mut url = back.to_string();
    if !outcome.message.is_empty() {
        url.push_str("?notice=");
        url.push_str(&super::urlencode(&outcome.message));
        if !outcome.done {
            url.push_str("&refused=1");
        }
    }
    Redirect::to(&url).into_response()
}

/// The message a page shows after a redirect (`?notice=…&refused=1`).
#[derive(Deserialize, Default)]
pub struct NoticeQuery {
    notice: Option<String>,
    refused: Option<String>,
}

impl NoticeQuery {
    pub fn notice(&self) -> Option<String> {
        self.notice.clone().filter(|n| !n.is_empty())
    }
    pub fn refused(&self) -> bool {
        self.refused.as_deref() == Some("1")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(r: &Response) -> String {
        r.headers()[header::LOCATION].to_str().unwrap().to_string()
    }

    #[test]
    fn without_javascript_the_message_rides_the_redirect() {
        let plain = HeaderMap::new();
        let r = answer(&plain, "/", FormOutcome::done("queue paused"));
        assert_eq!(location(&r), "/?notice=queue%20paused");
        let r = answer(
            &plain,
            "/printers/p%201",
            FormOutcome::refused(StatusCode::CONFLICT, "p 1 is not printing"),
        );
        assert_eq!(
            location(&r),
            "/printers/p%201?notice=p%201%20is%20not%20printing&refused=1"
        );
    }

    #[test]
    fn the_script_gets_json_with_the_refusal_status() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, "application/json".parse().unwrap());
        let r = answer(
            &h,
            "/",
            FormOutcome::refused(StatusCode::CONFLICT, "already first"),
        );
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert!(r.headers().get(header::LOCATION).is_none());
        // A browser page load (Accept lists text/html) still gets the redirect.
        h.insert(
            header::ACCEPT,
            "text/html,application/json;q=0.9".parse().unwrap(),
        );
        let r = answer(&h, "/", FormOutcome::done("ok"));
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
    }
}
