//! With the `test-guests` feature, builds the test guests (guests/*.S, and the C guests
//! guests/*.c) from source with the system C compiler and `ld` into static x86-64 ELF
//! files under OUT_DIR/guests; src/guests.rs embeds them. Without it, nothing.

use std::path::Path;
use std::process::Command;

const GUESTS: &[&str] = &[
    "console",
    "hello",
    "boot_contract",
    "triple_fault",
    "spin",
    "garbage",
    "smp",
    "pvh",
];

/// Guests written in C (freestanding, no libc; `_start` is in the file).
const C_GUESTS: &[&str] = &["virtio_echo", "vsock_stream", "net_tap", "net_bench"];

/// How the C guests are compiled: freestanding 64-bit code at a fixed address,
/// no red zone (no interrupts could use it anyway), no SSE (the guest does not
/// enable it), no stack protector or unwind tables.
const C_FLAGS: &[&str] = &[
    "-ffreestanding",
    "-nostdlib",
    "-mno-red-zone",
    "-fno-pic",
    "-static",
    "-O2",
    "-mgeneral-regs-only",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fcf-protection=none",
    "-fno-toplevel-reorder",
    "-Wall",
    "-Werror",
];

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (gcc and binutils are needed to build the test guests)")
    });
    assert!(status.success(), "{cmd:?} failed with {status}");
}

fn main() {
    // The whole directory: the guests and the headers they include (abi.h, virtio_guest.h).
    println!("cargo:rerun-if-changed=guests");
    if std::env::var_os("CARGO_FEATURE_TEST_GUESTS").is_none() {
        return;
    }
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    let out = Path::new(&out).join("guests");
    std::fs::create_dir_all(&out).expect("create OUT_DIR/guests");
    let src = Path::new("guests");
    let target = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let sources = GUESTS
        .iter()
        .map(|g| (*g, "S"))
        .chain(C_GUESTS.iter().map(|g| (*g, "c")));
    for (g, ext) in sources {
        let elf = out.join(format!("{g}.elf"));
        if target != "x86_64" {
            // Nothing to run them on; keep include_bytes! happy.
            std::fs::write(&elf, b"").expect("write placeholder");
            continue;
        }
        let obj = out.join(format!("{g}.o"));
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let mut compile = Command::new(cc);
        compile.args(["-c", "-nostdlib", "-ffreestanding"]);
        if ext == "c" {
            compile.args(C_FLAGS);
        }
        run(compile
            .arg("-I")
            .arg(src)
            .arg(src.join(format!("{g}.{ext}")))
            .arg("-o")
            .arg(&obj));
        run(Command::new("ld")
            .args([
                "-m",
                "elf_x86_64",
                "-static",
                "-nostdlib",
                "--build-id=none",
                "-z",
                "max-page-size=4096",
                "-z",
                "noexecstack",
                "-T",
            ])
            .arg(src.join("guest.ld"))
            .arg("-o")
            .arg(&elf)
            .arg(&obj));
    }
}
