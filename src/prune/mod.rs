//! AT-EDM token pruning: the FLOPs model (more to come: G-WPR, masks, recovery, DSAP, ToMe).

pub mod flops;
pub mod gwpr;
