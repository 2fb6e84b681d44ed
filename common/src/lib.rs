//! Contracts shared by every paystream service: identifiers, money, the ingress and event
//! payloads with their codecs, the payment state machine, configuration, telemetry, stream
//! definitions and the consumer loop.
//!
//! Architecture Invariant: this crate depends on no service crate.

pub mod apply;
pub mod codec;
pub mod config;
pub mod consume;
pub mod db;
pub mod events;
pub mod failpoint;
pub mod failures;
pub mod health;
pub mod ids;
pub mod ingress;
pub mod lag;
pub mod money;
pub mod nats;
pub mod nats_server;
pub mod ownership;
pub mod payment;
pub mod pending_dead_letters;
pub mod publish;
pub mod settlement;
pub mod shutdown;
pub mod state;
pub mod streams;
pub mod telemetry;
pub mod text;
pub mod time;
pub mod tls;
