//! The audit log: an append-only, hash-chained record of every decision.
//!
//! [`record`] is the format (pure), [`event`] what is recorded, [`writer`] the one
//! thread that appends to a chain with group commit, [`verify`] the streaming
//! verifier behind `audit verify`.

pub mod event;
pub mod export;
pub mod record;
pub mod verify;
pub mod writer;

pub use event::{Event, Subject};
pub use verify::Anchors;
pub use writer::{AuditError, AuditHealth, AuditLog, CheckpointCopy, Durability, WriterOptions};
