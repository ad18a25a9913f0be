//! Who is calling: the operator, a proxy, or a member (a signed-in person's access token).

use keygate_core::token::MAX_TOKEN_LEN;

use crate::clock::now;
use crate::error::AdminError;
use crate::state::AppState;

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let header = header?.trim();
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= MAX_TOKEN_LEN).then_some(token)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Operator,
    /// A signed-in person, from a valid access token of a live sign-in session.
    Member {
        user_id: String,
        session_id: String,
        businesses: Vec<String>,
    },
}

impl Caller {
    pub fn may_manage(&self, business: &str) -> bool {
        match self {
            Caller::Operator => true,
            Caller::Member { businesses, .. } => businesses.iter().any(|b| b == business),
        }
    }
}

pub fn require_operator(state: &AppState, header: Option<&str>) -> Result<(), AdminError> {
    match bearer(header) {
        Some(token) if state.is_operator_token(token) => Ok(()),
        _ => Err(AdminError::Unauthorized),
    }
}

pub fn require_proxy(state: &AppState, header: Option<&str>) -> Result<(), AdminError> {
    match bearer(header) {
        Some(token) if state.is_proxy_token(token) => Ok(()),
        _ => Err(AdminError::Unauthorized),
    }
}

/// The operator, or a member whose token verifies, whose session is not revoked and
/// whose account still exists. The member's businesses are those both in the token and
/// in the account now.
pub fn caller(state: &AppState, header: Option<&str>) -> Result<Caller, AdminError> {
    let token = bearer(header).ok_or(AdminError::Unauthorized)?;
    if state.is_operator_token(token) {
        return Ok(Caller::Operator);
    }
    let now = now();
    let claims = state.tokens().verify(token, now).map_err(|_| AdminError::Unauthorized)?;
    if !claims.sub.starts_with("usr_") {
        // An API-key login token speaks for a key, not for a person.
        return Err(AdminError::Forbidden);
    }
    if state.store().revoked_until(&claims.sid)?.is_some() {
        return Err(AdminError::Unauthorized);
    }
    let user = state.store().user(&claims.sub)?.ok_or(AdminError::Unauthorized)?;
    let businesses = claims.businesses.into_iter().filter(|b| user.businesses.contains(b)).collect();
    Ok(Caller::Member { user_id: user.id, session_id: claims.sid, businesses })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }
}
