//! Several stores of one kernel build → one coverage: the runs of a CI job's cases, or the
//! shards of one CI run on several machines. Stores merge only when they record the same
//! kernel build-id (line numbers and PCs mean nothing across builds). Hit counts add up, so
//! the merge does not depend on how the stores were grouped or ordered: two shards merged give
//! the same coverage as one machine running every case.

use std::path::PathBuf;

use crate::map::Attribution;
use crate::report::{RunCoverage, SourceFilter};
use crate::store::{PcCounts, Store, StoreError};
use crate::symbolizer::SiteTable;

/// Why stores cannot be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// Nothing was given.
    #[error("nothing to merge: no coverage store given")]
    Empty,
    /// Two stores ran different kernels.
    #[error(
        "{} ran kernel build-id {a_id} but {} ran build-id {b_id}: stores of different kernel \
         builds cannot be merged (rerun the shards on one kernel build)",
        a.display(),
        b.display()
    )]
    DifferentKernels {
        /// One store.
        a: PathBuf,
        /// Its build-id.
        a_id: String,
        /// The other.
        b: PathBuf,
        /// Its build-id.
        b_id: String,
    },
    /// A store does not say which kernel it ran.
    #[error(
        "{}: the store does not record its kernel's build-id, so nothing shows it ran the same \
         kernel as the others; merge it alone",
        .0.display()
    )]
    UnknownKernel(PathBuf),
    /// A store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The build-id every store of `stores` ran, checked: all equal. A single store may lack one.
pub fn common_build_id(stores: &[&Store]) -> Result<Option<String>, MergeError> {
    let Some(first) = stores.first() else {
        return Err(MergeError::Empty);
    };
    if stores.len() == 1 {
        return Ok(first.meta.kernel.build_id.clone());
    }
    let id = |s: &Store| {
        s.meta
            .kernel
            .build_id
            .clone()
            .ok_or_else(|| MergeError::UnknownKernel(s.dir.clone()))
    };
    let want = id(first)?;
    for s in &stores[1..] {
        let have = id(s)?;
        if have != want {
            return Err(MergeError::DifferentKernels {
                a: first.dir.clone(),
                a_id: want,
                b: s.dir.clone(),
                b_id: have,
            });
        }
    }
    Ok(Some(want))
}

/// Every guest PC set of every store (host coverage is never merged onto a guest kernel).
pub fn guest_pcs(stores: &[&Store]) -> Result<Vec<PcCounts>, StoreError> {
    let mut out = Vec::new();
    for s in stores {
        out.extend(s.all_pcs(None)?.into_iter().map(|(_, p)| p));
    }
    Ok(out)
}

/// The stores' guest coverage merged (hit counts summed) and mapped onto `table`, after
/// [`common_build_id`] checked they ran one kernel.
pub fn merged_coverage(
    table: &SiteTable,
    stores: &[&Store],
    sources: SourceFilter,
) -> Result<RunCoverage, MergeError> {
    common_build_id(stores)?;
    let pcs = guest_pcs(stores)?;
    Ok(RunCoverage::build(
        table,
        &pcs,
        sources,
        Attribution::AllFrames,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{chunk, hello, result, stream};
    use crate::store::{collect, KernelIdentity};
    use kcov_wire::{Done, Frame, WorkloadStart};

    fn store(dir: &std::path::Path, build_id: Option<&str>, pcs: &[u64]) -> Store {
        let bytes = stream(&[
            hello(),
            Frame::WorkloadStart(WorkloadStart { name: "w".into() }),
            chunk("w", 0, pcs),
            result("w"),
            Frame::Done(Done { status: 0 }),
        ]);
        let kernel = KernelIdentity {
            build_id: build_id.map(str::to_string),
            ..KernelIdentity::default()
        };
        collect(&bytes[..], dir, kernel).unwrap();
        Store::open(dir).unwrap()
    }

    #[test]
    fn only_stores_of_one_kernel_merge() {
        let t = tempfile::tempdir().unwrap();
        let a = store(&t.path().join("a"), Some("aa"), &[1, 2]);
        let b = store(&t.path().join("b"), Some("aa"), &[2, 3]);
        let c = store(&t.path().join("c"), Some("bb"), &[4]);
        let d = store(&t.path().join("d"), None, &[5]);
        assert_eq!(common_build_id(&[&a, &b]).unwrap().as_deref(), Some("aa"));
        let e = common_build_id(&[&a, &b, &c]).unwrap_err().to_string();
        assert!(
            e.contains("build-id aa") && e.contains("build-id bb"),
            "{e}"
        );
        assert!(e.contains(&*t.path().join("a").to_string_lossy()), "{e}");
        assert!(e.contains(&*t.path().join("c").to_string_lossy()), "{e}");
        assert!(matches!(
            common_build_id(&[&a, &d]),
            Err(MergeError::UnknownKernel(_))
        ));
        assert_eq!(common_build_id(&[&d]).unwrap(), None);
        assert!(matches!(common_build_id(&[]), Err(MergeError::Empty)));
        let pcs = guest_pcs(&[&a, &b]).unwrap();
        assert_eq!(pcs.len(), 2);
        assert_eq!(pcs.iter().map(|p| p.pcs.len()).sum::<usize>(), 4);
    }
}
