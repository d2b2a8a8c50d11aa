//! Evaluation on the demo model's shapes world: the caption grammar and dataset definition
//! ([`spec`]), a prompt-adherence detector ([`detect`]) and image fidelity metrics ([`metrics`]).

pub mod detect;
pub mod metrics;
pub mod run;
pub mod spec;
