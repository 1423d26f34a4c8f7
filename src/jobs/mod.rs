//! Jobs: stored print files (`files`, `threemf`), filament colours and plate
//! requirements (`filament`), which loaded tray feeds which filament (`ams_mapping`), the job
//! model, plate state and the plate-clear
//! dispatcher (pure decision core in `dispatcher`, checked by the seeded simulation in
//! `simulation`) and its effect runner (`runner`, the only place that turns decisions into
//! uploads and publishes). Job persistence lives in `store::jobs`.

pub mod ams_mapping;
pub mod dispatcher;
pub mod filament;
pub mod files;
pub mod model;
pub mod plate;
pub mod runner;
pub mod simulation;
pub mod threemf;
