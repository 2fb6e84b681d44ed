//! End-to-end tests of the PSP simulator: the real server on a bound port, a fresh store in a
//! temporary directory per test, and a real HTTP (or HTTPS) client.

mod auth;
mod data_dir;
mod faults;
mod helpers;
mod latency;
mod payments;
mod rate_limit;
mod refunds;
mod restart;
mod scripted;
mod settlement;
mod stats;
mod tls;
