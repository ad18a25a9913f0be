//! The signed-in member and their sessions.

use serde::Serialize;
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;

use super::{blocking, business_views, durable_write, is_id, ok_json, BusinessView, SessionRevoked};
use crate::auth::Caller;
use crate::error::AdminError;
use crate::rfc3339;
use crate::state::AppState;
use crate::store::{now, Audit, SessionOwner};
use std::net::IpAddr;

#[derive(Serialize, ToSchema)]
pub struct MeUser {
    id: String,
    email: String,
}

#[derive(Serialize, ToSchema)]
pub struct MeView {
    user: MeUser,
    /// The session of the token this request came with.
    session_id: String,
    businesses: Vec<BusinessView>,
}

/// The signed-in member: who they are, which businesses they may manage (with names),
/// and the session their token belongs to. Members only (the operator has no account).
#[utoipa::path(get, path = "/v1/me", tag = "auth", summary = "The signed-in member, their businesses and current session", security(("member" = [])),
    responses(
        (status = 200, description = "The member", body = MeView)
    )
)]
pub async fn me(state: AppState, caller: Caller) -> Result<Response, AdminError> {
    let Caller::Member { user_id, session_id, businesses } = caller else {
        return Err(AdminError::InvalidRequest("the operator token has no account; sign in as a member".to_owned()));
    };
    let user = state.store().user(&user_id)?.ok_or(AdminError::Unauthorized)?;
    let views = business_views(&state, &businesses)?;
    ok_json(StatusCode::OK, &MeView { user: MeUser { id: user.id, email: user.email }, session_id, businesses: views })
}

#[derive(Serialize, ToSchema)]
pub struct SessionView {
    id: String,
    #[schema(format = DateTime)]
    created_at: String,
    /// When the current access token expires.
    #[schema(format = DateTime)]
    access_expires_at: String,
    /// Until when the session can be refreshed.
    #[schema(format = DateTime)]
    refresh_expires_at: Option<String>,
    /// The session of the token this request came with.
    current: bool,
}

#[derive(Serialize, ToSchema)]
pub struct SessionList {
    sessions: Vec<SessionView>,
}

/// The caller's live sign-in sessions, oldest first. Members only.
#[utoipa::path(get, path = "/v1/sessions", tag = "auth", summary = "The signed-in member's live sessions", security(("member" = [])),
    responses(
        (status = 200, description = "The sessions", body = SessionList)
    )
)]
pub async fn list_sessions(state: AppState, caller: Caller) -> Result<Response, AdminError> {
    let Caller::Member { user_id, session_id, .. } = caller else {
        return Err(AdminError::InvalidRequest("the operator token has no sessions; sign in as a member".to_owned()));
    };
    let now = now();
    let sessions = blocking(state.store(), move |s| s.live_user_sessions(&user_id, now)).await?;
    let views: Vec<SessionView> = sessions
        .iter()
        .map(|s| SessionView {
            id: s.id.clone(),
            created_at: rfc3339::format(s.created_at),
            access_expires_at: rfc3339::format(s.last_exp),
            refresh_expires_at: s.refresh_expires_at.map(rfc3339::format),
            current: s.id == session_id,
        })
        .collect();
    ok_json(StatusCode::OK, &SessionList { sessions: views })
}

#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "auth", summary = "Revoke a session (a member may revoke their own)", security(("member" = []), ("operator" = [])), params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "Revoked", body = SessionRevoked)
    )
)]
pub async fn revoke_session(state: AppState, caller: Caller, client: IpAddr, sid: String) -> Result<Response, AdminError> {
    if !is_id(&sid, "ses_") {
        return Err(AdminError::SessionNotFound);
    }
    let session = state.store().session(&sid)?.ok_or(AdminError::SessionNotFound)?;
    let allowed = match (&caller, &session.owner) {
        (Caller::Operator, _) => true,
        (Caller::Member { user_id, .. }, SessionOwner::User { user_id: owner }) => user_id == owner,
        (Caller::Member { .. }, SessionOwner::Key { .. }) => false,
    };
    if !allowed {
        return Err(AdminError::Forbidden);
    }
    let leeway = state.config().token_leeway_secs;
    let mut audit = Audit::new(super::audit::actor(&caller, client), "session.revoke", "session", &sid);
    if let SessionOwner::Key { key_id, .. } = &session.owner {
        audit = audit.detail("key", key_id.as_str());
        if let Some(key) = state.store().key(key_id)? {
            audit = audit.business(&key.business);
        }
    }
    let revoked = durable_write(&state.store().audited(audit), move |s| s.revoke_session(&sid, leeway)).await?;
    tracing::info!(session = %revoked.sid, "session revoked");
    ok_json(StatusCode::OK, &SessionRevoked { sid: revoked.sid, revoked: true, until: revoked.until })
}
