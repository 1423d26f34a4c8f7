//! Jobs: stored print files, the job queue, plate state and the plate-clear dispatcher.

pub mod files;
pub mod threemf;
