//! Upstream pools: the servers behind a route, how one is chosen for a request
//! (`balance`, `sticky`), and whether each is usable (`health`). The proxy asks
//! a [`Pool`] for a server ([`Pool::affinity`] then [`Pool::select`]), sends the
//! request or opens the splice, and reports back how the attempt went.
//!
//! ```text
//! request ─ affinity (sticky: cookie token | ip | header | query) ─┐
//!                                   health (passive + active) ─ select ─ Choice { backend, issue_cookie }
//!                        balance (round_robin | least_conn | random) ─┘
//! ```

pub mod balance;
pub mod connect;
pub mod conns;
pub mod health;
pub mod pool;
pub mod sticky;

pub use pool::{Affinity, Backend, BackendId, Choice, Pool, ServerState, ServerStatus};
