//! The text-to-image pipeline: scheduler, guidance and generation.

pub mod generate;
pub mod scheduler;
