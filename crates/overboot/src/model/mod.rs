//! What both sides of the switch agree on: the report and its phases, exit classes, the names
//! of the state files, the records one process leaves another, injected faults, and the layout
//! of a tree's images in the map. Imports nothing else of this crate.

pub mod exit;
pub mod fault;
pub mod files;
pub mod images;
pub mod metrics;
pub mod phases;
pub mod records;
pub mod report;
pub mod rounds;
