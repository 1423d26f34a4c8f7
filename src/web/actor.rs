//! Who is acting: the name recorded with every tap, upload and cancel. The authentication layer
//! puts an [`Actor`] into the request extensions once it has identified the user or token; a
//! request without one is refused (so a route outside that layer cannot act anonymously).

use super::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;

/// The authenticated user (or API token) name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Actor>()
            .cloned()
            .ok_or_else(ApiError::unauthorized)
    }
}
