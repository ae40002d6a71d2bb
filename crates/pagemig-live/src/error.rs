//! [`LiveError`]: why the live backend cannot run here, or a bad request. System-call
//! failures keep their `io::Error` as the source.

#![forbid(unsafe_code)]

use pagemig::mm::MmError;

use crate::handler::MIN_KERNEL;

/// Why the live backend cannot run, or a bad request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LiveError {
    /// `userfaultfd(2)` does not exist.
    #[error("this kernel has no userfaultfd (userfaultfd(2) returned ENOSYS): it was built without CONFIG_USERFAULTFD; the live backend cannot run here")]
    NoUserfaultfd,
    /// `userfaultfd(2)` was refused.
    #[error("userfaultfd(2) was refused ({0}); with vm.unprivileged_userfaultfd = 0 only UFFD_USER_MODE_ONLY works without privilege (Linux 5.11+), or run with CAP_SYS_PTRACE")]
    Refused(#[source] std::io::Error),
    /// The kernel is older than 6.8.
    #[error("kernel {release} is older than {}.{}: the live backend needs UFFDIO_MOVE (Linux 6.8+)", MIN_KERNEL.0, MIN_KERNEL.1)]
    KernelTooOld {
        /// `uname -r`
        release: String,
    },
    /// A userfaultfd feature is missing.
    #[error("the kernel's userfaultfd lacks {feature} (UFFDIO_API reported features {features:#x}); the live backend needs it to move anonymous pages (Linux 6.8+)")]
    MissingFeature {
        /// the feature
        feature: &'static str,
        /// what the kernel offered
        features: u64,
    },
    /// Registering a range failed, or it lacks `UFFDIO_MOVE`.
    #[error("cannot register {what} with userfaultfd: {detail}")]
    Register {
        /// which range
        what: String,
        /// why
        detail: String,
        /// the system call's error, where one failed
        #[source]
        source: Option<std::io::Error>,
    },
    /// Another system call failed.
    #[error("{call} failed: {source}")]
    Sys {
        /// the call
        call: &'static str,
        /// the error
        #[source]
        source: std::io::Error,
    },
    /// A region that [`LiveRegion::remake`](crate::LiveRegion::remake) was asked to remake
    /// has pages in use.
    #[error("the region of {len} bytes at {addr:#x} has pages in use: its folio size stays")]
    Touched {
        /// the region's first address
        addr: usize,
        /// its length
        len: usize,
    },
    /// A bad region configuration.
    #[error("invalid live region: {0}")]
    InvalidConfig(String),
    /// The memory model refused.
    #[error(transparent)]
    Mm(#[from] MmError),
}

pub(crate) fn sys_err(call: &'static str, e: std::io::Error) -> LiveError {
    LiveError::Sys { call, source: e }
}
