//! The house rules that the compiler does not check (ARCHITECTURE.md, "Invariants").
//!
//! * No import circles between files: a file never imports, directly or through others, a file
//!   that imports it (Cargo already forbids circles between crates). Every `use` and every
//!   `crate::`/`super::`/`self::`/own-crate path in code counts; test modules
//!   (`#[cfg(test)]`) and doc comments do not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A crate's source files by module path (`a::b` for src/a/b.rs or src/a/b/mod.rs; the crate
/// root is `[]`). A crate with both lib.rs and main.rs contributes main.rs as module `[]` of a
/// separate unit, named by its file.
struct Crate {
    name: String,
    modules: BTreeMap<Vec<String>, PathBuf>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn crates() -> Vec<Crate> {
    let root = workspace_root();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members: Vec<String> = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .map(|l| {
            l.split('"')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    assert!(
        members.len() > 5,
        "workspace members not found in Cargo.toml"
    );
    members
        .iter()
        .map(|m| {
            let dir = root.join(m);
            let toml = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
            let name = toml
                .lines()
                .find_map(|l| l.strip_prefix("name = "))
                .map(|n| n.trim_matches('"').replace('-', "_"))
                .unwrap();
            let src = dir.join("src");
            let mut files = Vec::new();
            rust_files(&src, &mut files);
            let mut modules = BTreeMap::new();
            for f in files {
                let rel = f.strip_prefix(&src).unwrap().with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                // src/bin/*.rs are crate roots of their own: they can only reach the library
                // through its name, which resolves below like any path.
                if parts.first().is_some_and(|p| p == "bin") {
                    continue;
                }
                if matches!(
                    parts.last().map(String::as_str),
                    Some("lib" | "main" | "mod")
                ) {
                    parts.pop();
                }
                // main.rs and lib.rs both map to []: keep lib.rs (main.rs reaches it by name).
                if parts.is_empty()
                    && f.file_name().is_some_and(|n| n == "main.rs")
                    && src.join("lib.rs").exists()
                {
                    continue;
                }
                modules.insert(parts, f);
            }
            Crate { name, modules }
        })
        .collect()
}

/// Collects the module paths a file names.
struct Uses<'a> {
    krate: &'a str,
    /// The module of the file, then of each inline module entered.
    scope: Vec<Vec<String>>,
    found: BTreeSet<Vec<String>>,
}

impl Uses<'_> {
    fn add(&mut self, segs: &[String]) {
        let Some(first) = segs.first() else { return };
        let here = self.scope.last().cloned().unwrap_or_default();
        let path = match first.as_str() {
            "crate" => segs[1..].to_vec(),
            s if s == self.krate => segs[1..].to_vec(),
            "self" => here.iter().chain(&segs[1..]).cloned().collect(),
            "super" => {
                let mut base = here;
                let mut rest = segs;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                base.into_iter().chain(rest.iter().cloned()).collect()
            }
            _ => return,
        };
        self.found.insert(path);
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                prefix.push(n.ident.to_string());
                self.add(prefix);
                prefix.pop();
            }
            syn::UseTree::Rename(r) => {
                prefix.push(r.ident.to_string());
                self.add(prefix);
                prefix.pop();
            }
            syn::UseTree::Glob(_) => self.add(prefix),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.meta
                .require_list()
                .is_ok_and(|l| l.tokens.to_string().contains("test"))
    })
}

impl<'ast> Visit<'ast> for Uses<'_> {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        self.add(&segs);
        syn::visit::visit_path(self, p);
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if is_cfg_test(&m.attrs) {
            return;
        }
        if m.content.is_some() {
            let mut inner = self.scope.last().cloned().unwrap_or_default();
            inner.push(m.ident.to_string());
            self.scope.push(inner);
            syn::visit::visit_item_mod(self, m);
            self.scope.pop();
        }
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !is_cfg_test(&f.attrs) {
            syn::visit::visit_item_fn(self, f);
        }
    }
}

/// The file a module path lands in: its longest prefix that is a file module.
fn file_of<'c>(c: &'c Crate, path: &[String]) -> Option<&'c PathBuf> {
    (1..=path.len())
        .rev()
        .find_map(|n| c.modules.get(&path[..n]))
}

/// File → files it imports (within its crate).
fn graph() -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut g = BTreeMap::new();
    for c in crates() {
        for (module, file) in &c.modules {
            let text = std::fs::read_to_string(file).unwrap();
            let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let mut uses = Uses {
                krate: &c.name,
                scope: vec![module.clone()],
                found: BTreeSet::new(),
            };
            uses.visit_file(&ast);
            let deps: BTreeSet<PathBuf> = uses
                .found
                .iter()
                .filter_map(|p| file_of(&c, p))
                .filter(|f| *f != file)
                .cloned()
                .collect();
            g.insert(file.clone(), deps);
        }
    }
    g
}

/// Strongly connected components with more than one file (Tarjan).
fn circles(g: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct T<'g> {
        g: &'g BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'g PathBuf, usize>,
        low: BTreeMap<&'g PathBuf, usize>,
        stack: Vec<&'g PathBuf>,
        on: BTreeSet<&'g PathBuf>,
        out: Vec<Vec<PathBuf>>,
    }
    fn visit<'g>(t: &mut T<'g>, v: &'g PathBuf) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut c = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                c.push(w.clone());
                if w == v {
                    break;
                }
            }
            if c.len() > 1 {
                c.sort();
                t.out.push(c);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn the_circle_finder_finds_circles() {
    let p = |s: &str| PathBuf::from(s);
    let g = BTreeMap::from([
        (p("a"), BTreeSet::from([p("b")])),
        (p("b"), BTreeSet::from([p("c")])),
        (p("c"), BTreeSet::from([p("a")])),
        (p("d"), BTreeSet::from([p("a")])),
    ]);
    assert_eq!(circles(&g), vec![vec![p("a"), p("b"), p("c")]]);
    // And the graph of this workspace is read: the coverage crate's report imports its map.
    let g = graph();
    let root = workspace_root();
    let report = &g[&root.join("coverage/src/report.rs")];
    assert!(
        report.contains(&root.join("coverage/src/map.rs")),
        "{report:?}"
    );
}

#[test]
fn no_file_imports_a_file_that_imports_it() {
    let root = workspace_root();
    let found: Vec<String> = circles(&graph())
        .iter()
        .map(|c| {
            c.iter()
                .map(|f| f.strip_prefix(&root).unwrap_or(f).display().to_string())
                .collect::<Vec<_>>()
                .join(" <-> ")
        })
        .collect();
    assert!(
        found.is_empty(),
        "import circles (break each by moving the shared type down, see ARCHITECTURE.md):\n  {}",
        found.join("\n  ")
    );
}
