//! The built guest kernel's .config has every option the testbed relies on.

use xtask::kernel::{load_fragments, parse_dotconfig, verify_config, KernelOpts};

/// The options the foundation issue names, checked by name so that dropping
/// one from a fragment also fails here.
const REQUIRED: &[(&str, &str)] = &[
    ("CONFIG_KCOV", "y"),
    ("CONFIG_KCOV_INSTRUMENT_ALL", "y"),
    ("CONFIG_KCOV_ENABLE_COMPARISONS", "y"),
    ("CONFIG_DEBUG_FS", "y"),
    ("CONFIG_VHOST_NET", "y"),
    ("CONFIG_VHOST_VSOCK", "y"),
    ("CONFIG_TUN", "y"),
    ("CONFIG_PACKET", "y"),
    ("CONFIG_UNIX", "y"),
    ("CONFIG_INET", "y"),
    ("CONFIG_VSOCKETS", "y"),
    ("CONFIG_VIRTIO_VSOCKETS", "y"),
    ("CONFIG_VIRTIO_MMIO", "y"),
    ("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", "y"),
    ("CONFIG_VIRTIO_NET", "y"),
    ("CONFIG_SERIAL_8250_CONSOLE", "y"),
    ("CONFIG_BLK_DEV_INITRD", "y"),
    ("CONFIG_DEVTMPFS", "y"),
    ("CONFIG_DEBUG_INFO", "y"),
];

#[test]
fn built_config_has_every_required_option() {
    let Some(path) = tests::artifact("TESTBED_KCONFIG") else {
        return;
    };
    let text = std::fs::read_to_string(&path).expect("reading the built .config");
    let config = parse_dotconfig(&text);
    let missing: Vec<String> = REQUIRED
        .iter()
        .filter(|(opt, val)| config.get(*opt).map(String::as_str) != Some(*val))
        .map(|(opt, val)| format!("{opt}={val} (have {:?})", config.get(*opt)))
        .collect();
    assert!(
        missing.is_empty(),
        "missing in {}: {missing:?}",
        path.display()
    );
    // No KASLR: kcov PCs must equal vmlinux addresses.
    assert!(
        matches!(
            config.get("CONFIG_RANDOMIZE_BASE").map(String::as_str),
            None | Some("n")
        ),
        "CONFIG_RANDOMIZE_BASE must be off"
    );
    // And every requirement of every fragment survived.
    let fragments = load_fragments(&KernelOpts::default()).expect("loading fragments");
    let mismatches = verify_config(&fragments, &text);
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}
