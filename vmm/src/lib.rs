//! The testbed KVM VMM. Its building blocks, VM and binary land with the VMM issue.
