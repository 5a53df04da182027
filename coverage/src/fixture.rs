//! Test fixture: a tiny real ELF built with `cc -fsanitize-coverage=trace-pc -g -O1`, with known
//! functions at known lines, linked against stub kcov hooks.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The instrumented translation unit. Line numbers are asserted by tests: keep them stable.
pub const FIXTURE_C: &str = r#"/* fixture.c: line 1 */
static inline __attribute__((always_inline)) int helper(int x)
{
	if (x > 10)                       /* line 4 */
		return x * 2;
	return x + 1;
}

__attribute__((noinline)) int branchy(int a, int b)   /* line 9 */
{
	int r = 0;
	if (a > b)
		r = helper(a);            /* line 13 */
	else
		r = b - a;
	if (r & 1)
		r += 3;
	return r;
}

__attribute__((noinline)) long compare(long a, int b, char c)   /* line 21 */
{
	long s = 0;
	switch (c) {
	case 1: s = a; break;
	case 7: s = b; break;
	case 42: s = a + b; break;
	}
	if (a == 1234567)
		s += 5;
	if (b < 3)
		s -= 1;
	return s;
}

int main(int argc, char **argv)
{
	(void)argv;
	return (int)(branchy(argc, 3) + compare(argc, argc, (char)argc));
}
"#;

/// Line gcc gives `branchy`'s entry: its opening brace (line 10), as GNU addr2line says too.
pub const BRANCHY_ENTRY_LINE: u32 = 10;
/// Line of the `helper(a)` call in `branchy`.
pub const HELPER_CALL_LINE: u32 = 13;
/// Line of `int branchy(`.
pub const BRANCHY_DECL_LINE: u32 = 9;
/// First line of `helper`'s body.
pub const HELPER_FIRST_LINE: u32 = 4;

/// Uninstrumented hooks.
const STUB_C: &str = r#"
void __sanitizer_cov_trace_pc(void) {}
void __sanitizer_cov_trace_cmp1(unsigned char a, unsigned char b) { (void)a; (void)b; }
void __sanitizer_cov_trace_cmp2(unsigned short a, unsigned short b) { (void)a; (void)b; }
void __sanitizer_cov_trace_cmp4(unsigned int a, unsigned int b) { (void)a; (void)b; }
void __sanitizer_cov_trace_cmp8(unsigned long a, unsigned long b) { (void)a; (void)b; }
void __sanitizer_cov_trace_const_cmp1(unsigned char a, unsigned char b) { (void)a; (void)b; }
void __sanitizer_cov_trace_const_cmp2(unsigned short a, unsigned short b) { (void)a; (void)b; }
void __sanitizer_cov_trace_const_cmp4(unsigned int a, unsigned int b) { (void)a; (void)b; }
void __sanitizer_cov_trace_const_cmp8(unsigned long a, unsigned long b) { (void)a; (void)b; }
void __sanitizer_cov_trace_switch(unsigned long v, unsigned long *cases) { (void)v; (void)cases; }
"#;

/// How to build the fixture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `-fsanitize-coverage=trace-pc -g`.
    TracePc,
    /// `-fsanitize-coverage=trace-pc,trace-cmp -g`.
    TraceCmp,
    /// trace-pc without `-g`.
    NoDebug,
    /// `-g`, no instrumentation, no hooks linked.
    NotInstrumented,
}

/// A built fixture; the directory goes away when dropped.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub exe: PathBuf,
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (is gcc installed?): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Fixture {
    pub fn build(variant: Variant) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(d.join("fixture.c"), FIXTURE_C).unwrap();
        std::fs::write(d.join("stub.c"), STUB_C).unwrap();
        let mut cc = Command::new("cc");
        cc.current_dir(d)
            .args(["-O1", "-c", "fixture.c", "-o", "fixture.o"]);
        match variant {
            Variant::TracePc => cc.args(["-g", "-fsanitize-coverage=trace-pc"]),
            Variant::TraceCmp => cc.args(["-g", "-fsanitize-coverage=trace-pc,trace-cmp"]),
            Variant::NoDebug => cc.args(["-g0", "-fsanitize-coverage=trace-pc"]),
            Variant::NotInstrumented => cc.args(["-g"]),
        };
        run(&mut cc);
        let mut objs = vec!["fixture.o"];
        if variant != Variant::NotInstrumented {
            run(Command::new("cc")
                .current_dir(d)
                .args(["-O1", "-g0", "-c", "stub.c", "-o", "stub.o"]));
            objs.push("stub.o");
        }
        run(Command::new("cc")
            .current_dir(d)
            .args(["-no-pie", "-Wl,--build-id", "-o", "fixture"])
            .args(&objs));
        let exe = d.join("fixture");
        Fixture { dir, exe }
    }

    pub fn path(&self) -> &Path {
        &self.exe
    }
}

/// `objdump -d --no-show-raw-insn FILE | grep -cE 'call.*<HOOK>'`, for each hook name given.
pub fn objdump_call_count(file: &Path, hooks: &[&str]) -> usize {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(file)
        .output()
        .expect("objdump (binutils) is needed by this test");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.contains("call"))
        .filter(|l| hooks.iter().any(|h| l.contains(&format!("<{h}>"))))
        .count()
}

/// GNU `addr2line -a -f -i` for `addrs`: per address, the (function, line) frames, innermost first.
pub fn gnu_addr2line(file: &Path, addrs: &[u64]) -> Vec<Vec<(String, Option<u32>)>> {
    let out = Command::new("addr2line")
        .args(["-a", "-f", "-i", "-e"])
        .arg(file)
        .args(addrs.iter().map(|a| format!("{a:#x}")))
        .output()
        .expect("addr2line (binutils) is needed by this test");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut result: Vec<Vec<(String, Option<u32>)>> = Vec::new();
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l.starts_with("0x") {
            result.push(Vec::new());
            continue;
        }
        let loc = lines.next().unwrap_or_default();
        let line = loc
            .rsplit(':')
            .next()
            .and_then(|n| n.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .filter(|n| *n != 0);
        result
            .last_mut()
            .expect("address line first")
            .push((l.to_string(), line));
    }
    result
}
