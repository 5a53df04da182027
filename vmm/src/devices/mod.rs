//! Devices the VMM emulates in user space, and the buses they sit on.

pub mod bus;
pub mod legacy;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
