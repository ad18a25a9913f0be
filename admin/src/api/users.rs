//! Members (email + password) of one or more businesses, created by the operator.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;

use super::{durable_write, is_id, normalize_email, ok_json, valid_email};
use crate::error::AdminError;
use crate::passwords::{MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS};
use crate::random;
use crate::state::AppState;
use crate::store::{now, Actor, Audit, User};
use std::net::IpAddr;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Stored trimmed and lowercased.
    #[schema(min_length = 3, max_length = 254)]
    email: String,
    /// 8 to 1024 characters (stored as an argon2id hash).
    #[schema(min_length = 8, max_length = 1024)]
    password: String,
    /// Ids of existing businesses the member may manage.
    #[schema(min_items = 1)]
    businesses: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct UserView {
    id: String,
    email: String,
    businesses: Vec<String>,
}

#[utoipa::path(post, path = "/v1/users", tag = "businesses", summary = "Create a member (email + password) of one or more businesses", security(("operator" = [])), request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = UserView)
    )
)]
pub async fn create_user(state: AppState, client: IpAddr, body: CreateUser) -> Result<Response, AdminError> {
    let email = normalize_email(&body.email);
    if !valid_email(&email) {
        return Err(AdminError::InvalidRequest("email is not a valid address".to_owned()));
    }
    let chars = body.password.chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
        return Err(AdminError::InvalidRequest(format!("password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters")));
    }
    if body.businesses.is_empty() {
        return Err(AdminError::InvalidRequest("businesses must name at least one business".to_owned()));
    }
    let mut businesses: Vec<String> = Vec::new();
    for id in body.businesses {
        if !is_id(&id, "biz_") || state.store().business(&id)?.is_none() {
            return Err(AdminError::BusinessNotFound);
        }
        if !businesses.contains(&id) {
            businesses.push(id);
        }
    }
    // Checked again inside the write; this only spares the argon2 work.
    if state.store().email_taken(&email)? {
        return Err(AdminError::EmailTaken);
    }
    let password_phc = state.passwords().hash(body.password).await?;
    let user = User { id: random::id("usr_")?, email, password_phc, businesses, created_at: now() };
    let (id, email, businesses) = (user.id.clone(), user.email.clone(), user.businesses.clone());
    let audit = businesses.iter().fold(Audit::new(Actor::operator(client), "user.create", "user", &id), |a, b| a.business(b));
    durable_write(&state.store().audited(audit), move |s| s.create_user(&user)).await?;
    tracing::info!(user = %id, "user created");
    ok_json(StatusCode::CREATED, &UserView { id, email, businesses })
}
