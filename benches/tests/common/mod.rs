//! Shared helpers of the bench crate's tests.

/// `true` if /dev/kvm opens; otherwise prints the SKIP reason.
pub fn kvm_or_skip(test: &str) -> bool {
    match kvm_ioctls::Kvm::new() {
        Ok(_) => true,
        Err(e) => {
            test_skip::skip(test, test_skip::KVM, format!("cannot open /dev/kvm: {e}"));
            false
        }
    }
}
