//! Evaluation on the demo model's shapes world: the caption grammar and dataset definition
//! ([`spec`]), a prompt-adherence detector ([`detect`]), image fidelity metrics ([`metrics`])
//! and the benchmark of pruned variants against the full model ([`run`]).

pub mod detect;
pub mod metrics;
pub mod run;
pub mod spec;
