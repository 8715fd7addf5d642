//! Upstream pools: the servers behind a route, how one is chosen for a request
//! (`balance`), and whether each is usable (`health`). The proxy asks a [`Pool`]
//! for a [`Backend`] and reports back how the attempt went.

pub mod balance;
pub mod health;
pub mod pool;

pub use pool::{Backend, BackendId, Pool};
