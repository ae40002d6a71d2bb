//! Linux error numbers as the migration code uses them.

#![forbid(unsafe_code)]

use std::fmt;

/// A per-folio or per-call error code with the meaning Linux gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Errno {
    /// `EAGAIN`: transient, retry (extra reference, lock contention).
    Again,
    /// `EBUSY`: busy (writeback in async mode, a second migrator, all channels busy).
    Busy,
    /// `ENOMEM`: no memory for the destination.
    NoMem,
    /// `EHWPOISON`: a machine-check-safe copy met a poisoned source page.
    HwPoison,
    /// `EOPNOTSUPP`: the operation is not supported for this folio.
    NotSupported,
    /// `EINVAL`: invalid argument.
    Inval,
    /// `EFAULT`: bad address.
    Fault,
    /// `ENOENT`: no such page.
    NoEnt,
    /// `ENODEV`: no such device / node.
    NoDev,
    /// `ETIMEDOUT`: a copy engine did not complete in time.
    TimedOut,
    /// `EIO`: the copy engine reported an error.
    Io,
    /// `EPERM`: not permitted (`MPOL_MF_MOVE_ALL` without `CAP_SYS_NICE`).
    Perm,
    /// `EACCES`: access denied (a page mapped by several processes, without
    /// `MPOL_MF_MOVE_ALL`).
    Acces,
    /// `EEXIST`: already there (`UFFDIO_MOVE` onto a page that is already mapped).
    Exist,
    /// `ESRCH`: no such process (`UFFDIO_MOVE` after the address space went away).
    Srch,
}

impl Errno {
    /// Every value, in declaration order.
    pub const ALL: [Errno; 15] = [
        Errno::Again,
        Errno::Busy,
        Errno::NoMem,
        Errno::HwPoison,
        Errno::NotSupported,
        Errno::Inval,
        Errno::Fault,
        Errno::NoEnt,
        Errno::NoDev,
        Errno::TimedOut,
        Errno::Io,
        Errno::Perm,
        Errno::Acces,
        Errno::Exist,
        Errno::Srch,
    ];

    /// Position in [`Errno::ALL`].
    pub fn index(self) -> usize {
        Errno::ALL.iter().position(|e| *e == self).unwrap_or(0)
    }

    /// The positive Linux error number.
    pub fn errno(self) -> i32 {
        match self {
            Errno::Again => libc::EAGAIN,
            Errno::Busy => libc::EBUSY,
            Errno::NoMem => libc::ENOMEM,
            Errno::HwPoison => libc::EHWPOISON,
            Errno::NotSupported => libc::EOPNOTSUPP,
            Errno::Inval => libc::EINVAL,
            Errno::Fault => libc::EFAULT,
            Errno::NoEnt => libc::ENOENT,
            Errno::NoDev => libc::ENODEV,
            Errno::TimedOut => libc::ETIMEDOUT,
            Errno::Io => libc::EIO,
            Errno::Perm => libc::EPERM,
            Errno::Acces => libc::EACCES,
            Errno::Exist => libc::EEXIST,
            Errno::Srch => libc::ESRCH,
        }
    }

    /// The symbolic name (`"EAGAIN"`).
    pub fn name(self) -> &'static str {
        match self {
            Errno::Again => "EAGAIN",
            Errno::Busy => "EBUSY",
            Errno::NoMem => "ENOMEM",
            Errno::HwPoison => "EHWPOISON",
            Errno::NotSupported => "EOPNOTSUPP",
            Errno::Inval => "EINVAL",
            Errno::Fault => "EFAULT",
            Errno::NoEnt => "ENOENT",
            Errno::NoDev => "ENODEV",
            Errno::TimedOut => "ETIMEDOUT",
            Errno::Io => "EIO",
            Errno::Perm => "EPERM",
            Errno::Acces => "EACCES",
            Errno::Exist => "EEXIST",
            Errno::Srch => "ESRCH",
        }
    }

    /// The value for a positive Linux error number (`EOPNOTSUPP` and `ENOTSUP` are one
    /// number on Linux), or `None` for one this enum does not name.
    pub fn from_raw(errno: i32) -> Option<Errno> {
        Errno::ALL.iter().copied().find(|e| e.errno() == errno)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.errno())
    }
}

impl std::error::Error for Errno {}

/// An operating-system error kept as the source of a library error: an `io::Error`, shared
/// so that the error holding it can stay `Clone`, and compared by kind and OS error number
/// (an `io::Error` has no equality of its own).
#[derive(Debug, Clone)]
pub struct OsError(pub std::sync::Arc<std::io::Error>);

impl From<std::io::Error> for OsError {
    fn from(e: std::io::Error) -> OsError {
        OsError(std::sync::Arc::new(e))
    }
}

impl PartialEq for OsError {
    fn eq(&self, other: &OsError) -> bool {
        self.0.kind() == other.0.kind() && self.0.raw_os_error() == other.0.raw_os_error()
    }
}

impl Eq for OsError {}

impl fmt::Display for OsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for OsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}
