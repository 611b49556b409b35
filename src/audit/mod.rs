//! The audit log: an append-only, hash-chained record of every decision.
//!
//! [`record`] is the format (pure), [`typed`] its encoding straight from an event,
//! [`event`] what is recorded, [`writer`] the chain's appender (one thread with group
//! commit, and records written in place), [`verify`] the streaming verifier behind
//! `audit verify`.

pub mod event;
pub mod export;
pub mod record;
pub mod typed;
pub mod verify;
pub mod writer;

pub use event::{Event, Subject};
pub use verify::Anchors;
pub use writer::{AuditError, AuditHealth, AuditLog, CheckpointCopy, Durability, WriterOptions};
