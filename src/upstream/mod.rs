//! Upstream pools: the servers behind a route, how one is chosen for a request
//! (`balance`, `sticky`), and whether each is usable (`health`, `probe`). The
//! proxy asks a [`Pool`] for a server ([`Pool::affinity`] then [`Pool::select`]),
//! sends the request or opens the splice, and reports back how the attempt went.
//!
//! ```text
//! request ─ affinity (sticky: cookie token | ip | header | query) ─┐
//!                                   health (passive + active), max_conns ─ select ─ Choice { backend, inflight, issue_cookie }
//!                        balance (round_robin | least_conn | random) ─┘
//! ```
//!
//! Files depend on each other one way only: `balance`, `health` and `tls` are
//! leaves; `dial` (TCP, then TLS when the pool has it) uses `tls`; `h1` (the
//! HTTP/1.1 client, driven by the request's task) and `h2` (one multiplexed
//! HTTP/2 connection) use `dial`; `conns` uses `dial`, `h1` and `h2`; `backend` (one server) uses
//! `balance`, `health`, `conns` and `dial`; `sticky` uses `backend`; `pool` uses
//! all of those; `probe` (active checks) uses `pool`.

pub mod backend;
pub mod balance;
pub mod conns;
pub mod dial;
pub mod h1;
pub mod h2;
pub mod health;
pub mod pool;
pub mod probe;
pub mod sticky;
pub mod tls;

pub use backend::{Backend, BackendId, InflightGuard, Tried};
pub use pool::{Affinity, Choice, Pool, Unavailable};
