//! The Wasm host: the engine, loaded modules, the guest ABI's host functions, and running a
//! task in a fresh pooled instance with time and memory limits.

mod engine;
mod host;
mod module;
mod task;
mod windows;

pub use engine::WasmEngine;
pub use module::{LoadedModule, ModuleRegistry, ModuleStats};
pub(crate) use task::acquire_slot;
pub use task::{TaskSpec, run_task};
