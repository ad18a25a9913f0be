//! Looking up a key the caller may manage: shared by the key routes and the credit routes.

use super::is_id;
use crate::auth::Caller;
use crate::error::AdminError;
use crate::state::AppState;
use crate::store::Key;

/// The key `key_id` names, when the caller may manage its business.
pub(crate) fn managed_key(state: &AppState, caller: &Caller, key_id: &str) -> Result<Key, AdminError> {
    check_key_id(key_id)?;
    let key = state.store().key(key_id)?.ok_or(AdminError::KeyNotFound)?;
    if !caller.may_manage(&key.business) {
        return Err(AdminError::Forbidden);
    }
    Ok(key)
}

/// A malformed key id names no key.
pub(crate) fn check_key_id(key_id: &str) -> Result<(), AdminError> {
    if is_id(key_id, "key_") {
        Ok(())
    } else {
        Err(AdminError::KeyNotFound)
    }
}
