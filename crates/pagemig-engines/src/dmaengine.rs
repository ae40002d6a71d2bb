//! A dmaengine-style provider API — the analogue of `include/linux/dmaengine.h` for memcpy
//! channels: a device exposes channels; `prep_memcpy` builds a descriptor, `submit` queues
//! it and returns a cookie, `issue_pending` starts the hardware, and each descriptor
//! completes with its own result (`callback_result`). A real device (Intel DSA through an
//! idxd work queue, a GPU copy engine) implements these traits; dcbm needs nothing else.

use std::sync::Arc;

use pagemig::mm::Pfn;
use pagemig::Errno;

/// A bus address: a physical page plus a byte offset (`dma_addr_t` with no IOMMU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaAddr {
    /// page frame
    pub pfn: Pfn,
    /// byte offset from the frame
    pub offset: usize,
}

/// `dma_cookie_t`.
pub type Cookie = u64;

/// The result a descriptor completes with (`struct dmaengine_result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaResult {
    /// `DMA_TRANS_NOERROR`.
    NoError,
    /// `DMA_TRANS_WRITE_FAILED` / `READ_FAILED`: the transfer failed.
    Failed(Errno),
    /// `DMA_TRANS_ABORTED`: terminated before it ran.
    Aborted,
}

/// The completion callback of one descriptor.
pub type Callback = Box<dyn FnOnce(DmaResult) + Send>;

/// A prepared descriptor (`struct dma_async_tx_descriptor`).
pub struct Descriptor {
    /// destination
    pub dst: DmaAddr,
    /// source
    pub src: DmaAddr,
    /// bytes
    pub len: usize,
    /// completion callback
    pub callback: Option<Callback>,
}

impl std::fmt::Debug for Descriptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Descriptor")
            .field("dst", &self.dst)
            .field("src", &self.src)
            .field("len", &self.len)
            .finish()
    }
}

/// A DMA channel with memcpy capability.
pub trait DmaChannel: Send + Sync {
    /// Channel id within its device.
    fn id(&self) -> usize;
    /// `dmaengine_prep_dma_memcpy()`: `EBUSY` when the descriptor ring is full.
    fn prep_memcpy(
        &self,
        dst: DmaAddr,
        src: DmaAddr,
        len: usize,
        callback: Callback,
    ) -> Result<Descriptor, Errno>;
    /// `dmaengine_submit()`: queues the descriptor (not started yet).
    fn submit(&self, desc: Descriptor) -> Result<Cookie, Errno>;
    /// `dma_async_issue_pending()`: starts everything submitted.
    fn issue_pending(&self);
    /// `dmaengine_terminate_sync()`: aborts queued descriptors and waits until nothing on
    /// the channel runs; every callback has been called when it returns.
    fn terminate_sync(&self);
    /// Ring capacity: descriptors that may be outstanding at once.
    fn ring_depth(&self) -> usize;
}

/// A DMA device (`struct dma_device`).
pub trait DmaDevice: Send + Sync {
    /// Device name.
    fn name(&self) -> &str;
    /// Channels the device has.
    fn nr_channels(&self) -> usize;
    /// `dma_request_chan_by_mask(DMA_MEMCPY)`: a free channel, or `ENODEV`.
    fn request_channel(&self) -> Result<Arc<dyn DmaChannel>, Errno>;
    /// `dma_release_channel()`.
    fn release_channel(&self, ch: Arc<dyn DmaChannel>);
}
