//! Architecture-specific, pure boot building blocks.
//!
//! Nothing in here issues a KVM ioctl: every function takes plain memory (a
//! [`vm_memory::GuestMemoryBackend`]) or plain data (kvm-bindings structs) and
//! returns plain data, so all of it is unit-tested without `/dev/kvm`.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
