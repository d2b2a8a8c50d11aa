//! The text-to-image pipeline: scheduler, guidance and generation.

pub mod dump;
pub mod generate;
pub mod preview;
pub mod scheduler;
