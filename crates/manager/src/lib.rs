//! The Tern manager: `tern daemon` (libvirtd's role) and the client side of
//! its REST API used by the virsh-style CLI.
//!
//! * [`definition`]: the persistent TOML VM definition and its validation.
//! * [`daemon`]: the in-memory model, lifecycle operations and the supervisor.
//! * [`server`]/[`routes`]/[`http`]: the REST API on a Unix socket.
//! * [`shim`]: the per-VM parent process that records how a VMM ended.
//! * [`storage`]: dir and LVM storage pools.
//! * [`libvirt`]: libvirt domain XML import/export.
//! * [`client`]/[`proxy`]: the CLI's connection (local socket or SSH tunnel).
//!
//! Remote use: `tern <verb> --connect ssh://[user@]host[:port][/socket]`
//! runs `ssh host tern _proxy` and speaks the same HTTP over its stdio; the
//! daemon never listens on the network. TLS with client certificates is not
//! implemented (SSH covers the remote case without a second PKI).
//!
//! Processes: each VM runs as `tern _shim -- tern run ...` in its own session;
//! the daemon supervises through the VMM's control socket, pid+start time and
//! the shim's exit record, so it can die and come back without touching guests.

pub mod client;
pub mod console;
pub mod daemon;
pub mod definition;
pub mod http;
pub mod libvirt;
pub mod net;
pub mod openapi;
pub mod process;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod shim;
pub mod storage;
pub mod store;
pub mod vmproc;

pub use client::{Client, ClientError, DEFAULT_SOCKET, Endpoint};
pub use daemon::{Daemon, DaemonConfig};
pub use definition::VmDefinition;

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tern";
