//! Who is acting: the name recorded with every tap, upload and cancel, taken from the signed-in
//! user (or the API token's owner) that the authentication guard attached to the request. A
//! request without one is refused, so no route can act anonymously.

use super::ApiError;
use super::auth::CurrentUser;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;

/// The acting user's name, and for API tokens the printer chosen for slicer uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String, pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let user = parts
            .extensions
            .get::<CurrentUser>()
            .ok_or_else(ApiError::unauthorized)?;
        Ok(Actor(
            user.username.clone(),
            user.token_default_printer().map(str::to_string),
        ))
    }
}
