//! Jobs: stored print files (`files`, `threemf`), the job model, plate state and the plate-clear
//! dispatcher (pure decision core in `dispatcher`, checked by the seeded simulation in
//! `simulation`). Job persistence lives in `store::jobs`; the effect runner that executes the
//! dispatcher's actions is built in `lib.rs`.

pub mod dispatcher;
pub mod files;
pub mod model;
pub mod plate;
pub mod simulation;
pub mod threemf;
