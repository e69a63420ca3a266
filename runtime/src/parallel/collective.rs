//! The collective operations the parallel executor needs, behind one small trait, so the same
//! executor runs on CPU ranks (threads exchanging host memory) and on GPUs (NCCL on device memory).
//!
//! Contract of every implementation:
//! - A communicator is a fixed group of `world_size()` ranks; each rank holds its own handle and
//!   calls the same operations in the same order with buffers of the same byte length.
//! - Operations move bytes: the result is bit-identical to copying the chunks by hand, whatever
//!   the element type.
//! - [`Collective::abort`] makes every rank blocked in (or later entering) an operation of this
//!   communicator return [`CollectiveError::Aborted`] naming the rank that aborted and why; no rank
//!   is left waiting.

use std::marker::PhantomData;

/// Memory a collective reads.
#[derive(Debug)]
pub enum Buffer<'a> {
    /// Host memory.
    Host(&'a [u8]),
    /// `bytes` bytes of device memory at `ptr` on CUDA device `device`, valid for `'a`.
    Cuda { device: i32, ptr: u64, bytes: usize, _life: PhantomData<&'a [u8]> },
}

/// Memory a collective writes.
#[derive(Debug)]
pub enum BufferMut<'a> {
    /// Host memory.
    Host(&'a mut [u8]),
    /// `bytes` bytes of device memory at `ptr` on CUDA device `device`, valid and exclusive for `'a`.
    Cuda { device: i32, ptr: u64, bytes: usize, _life: PhantomData<&'a mut [u8]> },
}

impl Buffer<'_> {
    pub fn len(&self) -> usize {
        match self {
            Buffer::Host(b) => b.len(),
            Buffer::Cuda { bytes, .. } => *bytes,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl BufferMut<'_> {
    pub fn len(&self) -> usize {
        match self {
            BufferMut::Host(b) => b.len(),
            BufferMut::Cuda { bytes, .. } => *bytes,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CollectiveError {
    /// A rank called [`Collective::abort`]; every other rank gets this.
    #[error("rank {rank} aborted the group: {why}")]
    Aborted { rank: usize, why: String },
    /// The buffers break the operation's size rule (`op` names the operation).
    #[error("{op} on rank {rank}: {why}")]
    Shape { op: &'static str, rank: usize, why: String },
    /// The buffer kind is not one this implementation moves (e.g. device memory on the host one).
    #[error("{op} on rank {rank}: {why}")]
    Unsupported { op: &'static str, rank: usize, why: String },
    /// The backing library failed (NCCL's message, or a vanished peer).
    #[error("{op} on rank {rank}: {why}")]
    Backend { op: &'static str, rank: usize, why: String },
}

/// A communicator over `world_size()` ranks, as seen by one of them.
pub trait Collective: Send + Sync {
    /// This handle's rank, `0..world_size()`.
    fn rank(&self) -> usize;

    fn world_size(&self) -> usize;

    /// `send` and `recv` are both `world_size() * chunk` bytes. Chunk `j` of `send` goes to rank
    /// `j`; chunk `i` of `recv` is what rank `i` sent to this rank.
    fn all_to_all(&self, send: Buffer<'_>, recv: BufferMut<'_>) -> Result<(), CollectiveError>;

    /// `recv` is `world_size() * send.len()` bytes; chunk `i` of `recv` is rank `i`'s `send`.
    fn all_gather(&self, send: Buffer<'_>, recv: BufferMut<'_>) -> Result<(), CollectiveError>;

    /// Fails every pending and later operation of this communicator on every rank with
    /// [`CollectiveError::Aborted`] naming this rank and `why`. Never blocks.
    fn abort(&self, why: &str);
}
