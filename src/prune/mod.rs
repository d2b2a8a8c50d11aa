//! Token pruning: what a run asks for ([`settings`]), what every stack does at every step
//! ([`schedule`], the pruning scheduler that applies DSAP), AT-EDM's GPU decisions ([`gwpr`]:
//! G-WPR, top-k, recovery), the ToMe baseline ([`tome`]), the FLOPs model ([`flops`]) and the
//! budget solver ([`budget`]). Definitions: `docs/pruning.md`.

pub mod budget;
pub mod flops;
pub mod gwpr;
pub mod schedule;
pub mod settings;
pub mod tome;

pub use schedule::{PruneSchedule, Stack, StackAction, StackPrune};
pub use settings::{AtEdm, PruneMode, Pruning, Recovery, Tome};

/// The WGSL kernel families of pruning (G-WPR/top-k/recovery, ToMe).
pub fn shader_families() -> Vec<&'static crate::gpu::ShaderFamily> {
    vec![&gwpr::SHADER, &tome::SHADER]
}
