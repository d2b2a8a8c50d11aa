//! AT-EDM token pruning (FLOPs model, G-WPR, masks, recovery, DSAP) and the ToMe baseline.

pub mod flops;
pub mod gwpr;
pub mod tome;
