//! Copy primitives — the analogue of `copy_mc_highpage()` / `copy_mc_to_kernel()` and the
//! non-temporal copies the series lists as future work.
//!
//! This is one of the few modules with `unsafe`: it copies between raw pointers into the
//! node arenas. Everything above it calls the safe, bounds-checked wrappers in
//! [`crate::mm`] (`Memory::copy_phys`, `folio_mc_copy`).
//!
//! The primitive is chosen once at runtime. On this project's reference machine plain
//! `memcpy` (temporal stores below glibc's non-temporal threshold) copies 2 MiB chunks at
//! about 7.3 GB/s while AVX2 non-temporal stores reach about 13.3 GB/s, so the streaming
//! copy is preferred for every page-sized copy; copies shorter than [`NT_MIN_BYTES`] or with
//! a misaligned destination use `memcpy`.

#![allow(
    unsafe_code,
    reason = "raw memory and system calls, behind the contracts above"
)]

use std::sync::OnceLock;

/// Below this size (or with a destination not 32-byte aligned) a copy uses `memcpy`.
pub const NT_MIN_BYTES: usize = 256;

/// The copy primitive in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    /// AVX2 loads and `vmovntdq` streaming stores, 128 bytes an iteration.
    NtAvx2,
    /// SSE2 loads and `movntdq` streaming stores, 64 bytes an iteration.
    NtSse2,
    /// The platform `memcpy` (`core::ptr::copy_nonoverlapping`).
    Memcpy,
}

impl CopyKind {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            CopyKind::NtAvx2 => "nt-avx2",
            CopyKind::NtSse2 => "nt-sse2",
            CopyKind::Memcpy => "memcpy",
        }
    }
}

static KIND: OnceLock<CopyKind> = OnceLock::new();

/// The fastest correct primitive on this CPU (detected once).
pub fn best_kind() -> CopyKind {
    *KIND.get_or_init(detect)
}

fn detect() -> CopyKind {
    if let Ok(v) = std::env::var("PAGEMIG_COPY") {
        match v.as_str() {
            "memcpy" => return CopyKind::Memcpy,
            "nt-sse2" => return CopyKind::NtSse2,
            _ => {}
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            return CopyKind::NtAvx2;
        }
        return CopyKind::NtSse2;
    }
    #[allow(unreachable_code)]
    CopyKind::Memcpy
}

/// Copies `len` bytes from `src` to `dst` with the best primitive.
///
/// Streaming stores are weakly ordered and are **not** fenced here, so that a batch of
/// copies streams back to back: before another CPU may rely on the bytes, the copying
/// thread calls [`store_fence`] (a locked instruction — taking a mutex, an atomic
/// read-modify-write — drains the write-combining buffers too). The copying thread itself
/// always sees its own stores.
///
/// # Safety
/// `src` must be valid for reads and `dst` valid for writes of `len` bytes, and the two
/// ranges must not overlap. Concurrent writers to either range make the copied bytes
/// unspecified (as for any memory copy) but do not break memory safety of the caller:
/// both ranges lie in private anonymous mappings that are never unmapped while in use.
pub unsafe fn copy_bytes(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: forwarded contract; `best_kind` only returns a kind it detected on this CPU,
    // so the per-folio hot path does not check the feature again.
    unsafe { copy_supported(best_kind(), dst, src, len) }
}

/// Copies with an explicitly chosen primitive (for measurements). A kind this CPU cannot
/// run ([`CopyKind::NtAvx2`] without AVX2) falls back to [`CopyKind::NtSse2`], so no
/// choice of `kind` makes the call unsound.
///
/// # Safety
/// As for [`copy_bytes`]: `src` valid for reads and `dst` for writes of `len` bytes, the
/// ranges disjoint. Nothing is required of the CPU.
pub unsafe fn copy_bytes_with(kind: CopyKind, dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    let kind = if kind == CopyKind::NtAvx2 && !std::is_x86_feature_detected!("avx2") {
        CopyKind::NtSse2
    } else {
        kind
    };
    // SAFETY: forwarded contract; `kind` runs on this CPU (checked just above).
    unsafe { copy_supported(kind, dst, src, len) }
}

/// The copy itself.
///
/// # Safety
/// As for [`copy_bytes`], and `kind` must run on this CPU ([`CopyKind::NtAvx2`] only where
/// AVX2 was detected).
unsafe fn copy_supported(kind: CopyKind, dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if kind != CopyKind::Memcpy && len >= NT_MIN_BYTES && (dst as usize) % 32 == 0 {
            let body = match kind {
                CopyKind::NtAvx2 => len & !127,
                _ => len & !63,
            };
            match kind {
                // SAFETY: the kind runs on this CPU (this function's contract: AVX2 was
                // detected); the ranges are valid per the contract and `body <= len`;
                // `dst` is 32-byte aligned.
                CopyKind::NtAvx2 => unsafe { x86::copy_nt_avx2(dst, src, body) },
                // SAFETY: SSE2 is part of the x86_64 baseline; ranges as above, `dst` is
                // 16-byte aligned.
                _ => unsafe { x86::copy_nt_sse2(dst, src, body) },
            }
            if body < len {
                // SAFETY: the tail lies inside both ranges of the caller's contract.
                unsafe { core::ptr::copy_nonoverlapping(src.add(body), dst.add(body), len - body) };
            }
            return;
        }
    }
    let _ = kind;
    // SAFETY: the caller guarantees both ranges are valid and disjoint.
    unsafe { core::ptr::copy_nonoverlapping(src, dst, len) };
}

/// Orders every earlier streaming store before later stores (`sfence`): call it once after
/// a run of copies, before publishing their completion to another thread.
#[inline]
pub fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` has no preconditions.
    unsafe {
        core::arch::x86_64::_mm_sfence()
    };
    #[cfg(not(target_arch = "x86_64"))]
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    /// # Safety
    /// AVX2 available; `src` readable and `dst` writable for `len` bytes, disjoint;
    /// `len % 128 == 0`; `dst` 32-byte aligned.
    #[target_feature(enable = "avx2")]
    pub unsafe fn copy_nt_avx2(dst: *mut u8, src: *const u8, len: usize) {
        let mut off = 0;
        while off < len {
            // SAFETY: `off + 128 <= len`, so every load and store is in bounds; stores are
            // to 32-byte aligned addresses (`dst` aligned, offsets multiples of 32); loads
            // are unaligned loads.
            unsafe {
                let s = src.add(off) as *const __m256i;
                let d = dst.add(off) as *mut __m256i;
                let a = _mm256_loadu_si256(s);
                let b = _mm256_loadu_si256(s.add(1));
                let c = _mm256_loadu_si256(s.add(2));
                let e = _mm256_loadu_si256(s.add(3));
                _mm256_stream_si256(d, a);
                _mm256_stream_si256(d.add(1), b);
                _mm256_stream_si256(d.add(2), c);
                _mm256_stream_si256(d.add(3), e);
            }
            off += 128;
        }
    }

    /// # Safety
    /// `src` readable and `dst` writable for `len` bytes, disjoint; `len % 64 == 0`;
    /// `dst` 16-byte aligned.
    pub unsafe fn copy_nt_sse2(dst: *mut u8, src: *const u8, len: usize) {
        let mut off = 0;
        while off < len {
            // SAFETY: `off + 64 <= len`; 16-byte aligned stores, unaligned loads.
            unsafe {
                let s = src.add(off) as *const __m128i;
                let d = dst.add(off) as *mut __m128i;
                let a = _mm_loadu_si128(s);
                let b = _mm_loadu_si128(s.add(1));
                let c = _mm_loadu_si128(s.add(2));
                let e = _mm_loadu_si128(s.add(3));
                _mm_stream_si128(d, a);
                _mm_stream_si128(d.add(1), b);
                _mm_stream_si128(d.add(2), c);
                _mm_stream_si128(d.add(3), e);
            }
            off += 64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_copies_exact_bytes_with_tails_and_misalignment() {
        let src: Vec<u8> = (0..9000u32).map(|i| (i * 7 + 3) as u8).collect();
        // Every kind, AVX2 included: without AVX2 the call falls back to SSE2.
        for kind in [CopyKind::NtAvx2, CopyKind::NtSse2, CopyKind::Memcpy] {
            for &(off, len) in &[
                (0usize, 8192usize),
                (0, 4096 + 100),
                (3, 4000),
                (0, 255),
                (0, 0),
            ] {
                let mut dst = vec![0u8; 9000 + 64];
                let base = dst.as_mut_ptr();
                let pad = base.align_offset(32);
                // SAFETY: both ranges are inside live vectors of sufficient length and
                // distinct allocations.
                unsafe { copy_bytes_with(kind, base.add(pad + off), src.as_ptr(), len) };
                store_fence();
                assert_eq!(
                    &dst[pad + off..pad + off + len],
                    &src[..len],
                    "{kind:?} {off} {len}"
                );
                assert!(dst[pad + off + len..].iter().all(|&b| b == 0));
            }
        }
    }
}
