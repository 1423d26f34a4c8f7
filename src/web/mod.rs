//! Web: axum router, server-rendered pages and the JSON API.
