//! The `paystream` binary's library half: the assembly of services (`app`), the client and
//! query commands. `main.rs` only parses arguments and dispatches, so tests drive the same code.

pub mod api;
pub mod api_console;
pub mod app;
pub mod audit;
pub mod bench;
pub mod cli;
pub mod client;
pub mod console;
pub mod dlq;
pub mod dlq_index;
pub mod dlq_land;
pub mod dlq_watch;
pub mod identity;
pub mod operator;
pub mod output;
pub mod progress;
pub mod queries;
pub mod recon;
pub mod recon_resolve;
pub mod timeline;
