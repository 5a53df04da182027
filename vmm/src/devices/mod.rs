//! Devices the VMM emulates in user space, and the buses they sit on.

pub mod bus;
pub mod legacy;
pub mod serial;

pub use bus::{Bus, BusDevice, BusError};
