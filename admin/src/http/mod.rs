//! The warp filters ([`router`], built from [`crate::route_table`]) and what they read
//! from a request: its caller ([`caller`]) and its JSON body ([`body`]).

pub mod body;
pub mod caller;
pub mod router;
