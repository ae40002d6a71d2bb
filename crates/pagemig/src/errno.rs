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
}

impl Errno {
    /// Every value, in declaration order.
    pub const ALL: [Errno; 11] = [
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
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.errno())
    }
}

impl std::error::Error for Errno {}
