//! The text-to-image pipeline: the scheduler, generation, and runs described, saved and read
//! back for the viewer.

pub mod dump;
pub mod generate;
pub mod job;
pub mod load;
pub mod preview;
pub mod record;
pub mod request;
pub mod scheduler;
