//! Printer cameras for the people deciding about a plate (issue 18): one upstream connection
//! per printer shared by every viewer ([`hub::CameraHub`]), snapshots single-flight and reused
//! while fresh, the upstream closed a grace after the last viewer, and a camera that refuses us
//! (busy, wrong code, off) backed off and said in words instead of being asked again in a loop.
//! A frame kept in history is checked first ([`picture::check`]: bounded, a JPEG that
//! decodes). The camera only ever shows a picture: nothing here taps, starts or blocks a print.

pub mod hub;
pub mod picture;

pub use hub::{CameraHub, CameraTarget, ChamberTarget, Frame, HubTimings, SnapshotError};
