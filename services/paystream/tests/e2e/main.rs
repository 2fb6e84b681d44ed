//! End-to-end tests: the real application against a real nats-server 2.15 and a real database
//! (SQLite always, PostgreSQL when `PAYSTREAM_TEST_DATABASE_URL` is set). One test binary, so the
//! suite links once; nextest runs the tests in parallel, each on its own server and database.

mod api;
mod bad_input;
mod bench_smoke;
mod cancel;
mod cli;
mod console;
mod console_scale;
mod crash;
mod dead_letters;
mod faults;
mod happy;
mod health;
mod helpers;
mod nats_restart;
mod operator_cli;
mod ops;
mod ordering;
mod real_psp;
mod recon;
mod recon_file;
mod refunds;
mod scale;
mod security;
mod storage_bounds;
mod sweeper;
mod timeline;
mod tls;
mod topology;
mod up;
