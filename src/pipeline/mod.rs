//! The text-to-image pipeline: scheduler, guidance and generation.

pub mod scheduler;
pub mod generate;
