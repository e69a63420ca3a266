//! [`Collective`] over NCCL: one process, one rank per GPU, each rank's handle driven by its own
//! worker thread. The communicators are made together (`ncclCommInitRankConfig` for every rank in
//! one NCCL group) and are non-blocking (`ncclConfig_t::blocking = 0`, NCCL >= 2.14): no NCCL call
//! waits for a peer, so every wait is a loop of ours that watches the abort flag.
//!
//! NCCL and the CUDA runtime are loaded at run time (`libloading`), so the binary builds and runs
//! on hosts without CUDA: there [`NcclComm::init_all`] returns a clear error ("NCCL library not
//! found (searched ...)"), never a panic. Library lookup: `OSP_NCCL_LIBRARY` / `OSP_CUDART_LIBRARY`
//! (a path), else the usual sonames through the dynamic loader (`LD_LIBRARY_PATH`, the system
//! paths).
//!
//! Bytes move as `ncclUint8`, so results are bit-identical to copying the chunks by hand.
//! `all_to_all` is a group of `ncclSend`/`ncclRecv` pairs ([`all_to_all_schedule`]) plus one
//! device-to-device copy of the rank's own chunk; `all_gather` is `ncclAllGather`. Device buffers
//! ([`Buffer::Cuda`]) must live on the rank's device; host buffers are staged through device
//! memory (for tests and checks, not the hot path).
//!
//! Completion is awaited by polling, so an abort is noticed: [`Collective::abort`] raises a flag
//! shared by the group (it never blocks); each rank's wait loop (and every later operation) sees
//! it, calls `ncclCommAbort` on its own communicator and returns [`CollectiveError::Aborted`]. The
//! loop first polls `ncclCommGetAsyncError` until the group's operations are enqueued (a
//! non-blocking `ncclGroupEnd` returns `ncclInProgress` while it sets up connections, e.g. waiting
//! for a peer that never comes), then the rank's stream.
//!
//! `scripts/gpu_check.sh` runs these collectives against the reference on a GPU host
//! (`docs/parallel_gpu.md`).

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::collective::{Buffer, BufferMut, Collective, CollectiveError};

/// NCCL sonames tried after `OSP_NCCL_LIBRARY`.
pub const NCCL_NAMES: &[&str] = &["libnccl.so.2", "libnccl.so"];
/// CUDA runtime sonames tried after `OSP_CUDART_LIBRARY` (CUDA 13, 12, 11).
pub const CUDART_NAMES: &[&str] = &["libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so"];

const NCCL_SUCCESS: c_int = 0;
const NCCL_IN_PROGRESS: c_int = 7;
const NCCL_UINT8: c_int = 1;
const CUDA_SUCCESS: c_int = 0;
const CUDA_NOT_READY: c_int = 600;
const CUDA_STREAM_NON_BLOCKING: c_uint = 1;
const MEMCPY_HOST_TO_DEVICE: c_int = 1;
const MEMCPY_DEVICE_TO_HOST: c_int = 2;
const MEMCPY_DEVICE_TO_DEVICE: c_int = 3;

type Comm = *mut c_void;
type Stream = *mut c_void;

/// `ncclUniqueId` (`nccl.h`: `NCCL_UNIQUE_ID_BYTES` = 128), passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId {
    internal: [c_char; 128],
}

/// `ncclConfig_t` up to `splitShare` (the NCCL 2.17 layout). NCCL reads `size` and `version` and
/// leaves the fields a caller's layout lacks at their defaults, so an older layout is valid for
/// newer libraries.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Config {
    size: usize,
    magic: c_uint,
    version: c_uint,
    blocking: c_int,
    cga_cluster_size: c_int,
    min_ctas: c_int,
    max_ctas: c_int,
    net_name: *const c_char,
    split_share: c_int,
}

/// `NCCL_CONFIG_UNDEF_INT`: NCCL's default for the field.
const CONFIG_UNDEF_INT: c_int = c_int::MIN;

impl Config {
    /// `NCCL_CONFIG_INITIALIZER` for the 2.17 layout with `blocking = 0`.
    fn non_blocking() -> Self {
        Config {
            size: std::mem::size_of::<Config>(),
            magic: 0xcafe_beef,
            version: 21700,
            blocking: 0,
            cga_cluster_size: CONFIG_UNDEF_INT,
            min_ctas: CONFIG_UNDEF_INT,
            max_ctas: CONFIG_UNDEF_INT,
            net_name: std::ptr::null(),
            split_share: CONFIG_UNDEF_INT,
        }
    }
}

/// The NCCL and CUDA runtime entry points used here.
struct Api {
    nccl_get_version: unsafe extern "C" fn(*mut c_int) -> c_int,
    nccl_get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> c_int,
    nccl_comm_init_rank_config: unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int, *mut Config) -> c_int,
    nccl_comm_destroy: unsafe extern "C" fn(Comm) -> c_int,
    nccl_comm_abort: unsafe extern "C" fn(Comm) -> c_int,
    nccl_comm_get_async_error: unsafe extern "C" fn(Comm, *mut c_int) -> c_int,
    nccl_get_error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    nccl_group_start: unsafe extern "C" fn() -> c_int,
    nccl_group_end: unsafe extern "C" fn() -> c_int,
    nccl_send: unsafe extern "C" fn(*const c_void, usize, c_int, c_int, Comm, Stream) -> c_int,
    nccl_recv: unsafe extern "C" fn(*mut c_void, usize, c_int, c_int, Comm, Stream) -> c_int,
    nccl_all_gather: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, Comm, Stream) -> c_int,
    cuda_set_device: unsafe extern "C" fn(c_int) -> c_int,
    cuda_get_device_count: unsafe extern "C" fn(*mut c_int) -> c_int,
    cuda_stream_create_with_flags: unsafe extern "C" fn(*mut Stream, c_uint) -> c_int,
    cuda_stream_destroy: unsafe extern "C" fn(Stream) -> c_int,
    cuda_stream_query: unsafe extern "C" fn(Stream) -> c_int,
    cuda_malloc: unsafe extern "C" fn(*mut *mut c_void, usize) -> c_int,
    cuda_free: unsafe extern "C" fn(*mut c_void) -> c_int,
    cuda_memcpy_async: unsafe extern "C" fn(*mut c_void, *const c_void, usize, c_int, Stream) -> c_int,
    cuda_get_error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    /// Keeps the libraries mapped for the function pointers above.
    _libs: [libloading::Library; 2],
}

/// Opens the first of `candidates` that loads; the error lists what was tried and why.
fn open_first(what: &str, env: &str, candidates: &[String]) -> Result<libloading::Library, String> {
    let mut tried = Vec::new();
    for name in candidates {
        // SAFETY: loading NCCL / the CUDA runtime runs their initialisers, which have no
        // preconditions on us.
        match unsafe { libloading::Library::new(name.as_str()) } {
            Ok(lib) => return Ok(lib),
            Err(e) => match std::error::Error::source(&e) {
                Some(why) => tried.push(format!("{name} ({why})")),
                None => tried.push(format!("{name} ({e})")),
            },
        }
    }
    Err(format!(
        "{what} library not found (searched: {}); set {env} to its path or add its folder to LD_LIBRARY_PATH",
        tried.join("; ")
    ))
}

fn candidates(env: &str, names: &[&str]) -> Vec<String> {
    let mut list: Vec<String> = std::env::var_os(env)
        .filter(|v| !v.is_empty())
        .map(|v| PathBuf::from(v).display().to_string())
        .into_iter()
        .collect();
    list.extend(names.iter().map(|n| n.to_string()));
    list
}

macro_rules! symbol {
    ($lib:expr, $name:literal) => {{
        // SAFETY: the declared signature is the one of NCCL's `nccl.h` / CUDA's
        // `cuda_runtime_api.h` for this symbol; the library outlives the pointer (`Api::_libs`).
        let sym = unsafe { $lib.get(concat!($name, "\0").as_bytes()) }
            .map_err(|e| format!("symbol `{}` missing from the library: {e}", $name))?;
        *sym
    }};
}

impl Api {
    /// Loads NCCL from `nccl` and the CUDA runtime from `cudart` (the first of each list that loads).
    fn load_from(nccl: &[String], cudart: &[String]) -> Result<Api, String> {
        let n = open_first("NCCL", "OSP_NCCL_LIBRARY", nccl)?;
        let c = open_first("CUDA runtime", "OSP_CUDART_LIBRARY", cudart)?;
        Ok(Api {
            nccl_get_version: symbol!(n, "ncclGetVersion"),
            nccl_get_unique_id: symbol!(n, "ncclGetUniqueId"),
            nccl_comm_init_rank_config: symbol!(n, "ncclCommInitRankConfig"),
            nccl_comm_destroy: symbol!(n, "ncclCommDestroy"),
            nccl_comm_abort: symbol!(n, "ncclCommAbort"),
            nccl_comm_get_async_error: symbol!(n, "ncclCommGetAsyncError"),
            nccl_get_error_string: symbol!(n, "ncclGetErrorString"),
            nccl_group_start: symbol!(n, "ncclGroupStart"),
            nccl_group_end: symbol!(n, "ncclGroupEnd"),
            nccl_send: symbol!(n, "ncclSend"),
            nccl_recv: symbol!(n, "ncclRecv"),
            nccl_all_gather: symbol!(n, "ncclAllGather"),
            cuda_set_device: symbol!(c, "cudaSetDevice"),
            cuda_get_device_count: symbol!(c, "cudaGetDeviceCount"),
            cuda_stream_create_with_flags: symbol!(c, "cudaStreamCreateWithFlags"),
            cuda_stream_destroy: symbol!(c, "cudaStreamDestroy"),
            cuda_stream_query: symbol!(c, "cudaStreamQuery"),
            cuda_malloc: symbol!(c, "cudaMalloc"),
            cuda_free: symbol!(c, "cudaFree"),
            cuda_memcpy_async: symbol!(c, "cudaMemcpyAsync"),
            cuda_get_error_string: symbol!(c, "cudaGetErrorString"),
            _libs: [n, c],
        })
    }

    /// The process-wide libraries, loaded on first use.
    fn get() -> Result<&'static Api, String> {
        static API: OnceLock<Result<Api, String>> = OnceLock::new();
        API.get_or_init(|| {
            Api::load_from(&candidates("OSP_NCCL_LIBRARY", NCCL_NAMES), &candidates("OSP_CUDART_LIBRARY", CUDART_NAMES))
        })
        .as_ref()
        .map_err(Clone::clone)
    }

    fn nccl(&self, op: &'static str, rank: usize, code: c_int) -> Result<(), CollectiveError> {
        if code == NCCL_SUCCESS {
            return Ok(());
        }
        self.nccl_error(op, rank, code)
    }

    /// A call on a non-blocking communicator: `ncclInProgress` means started, and the wait loop
    /// ([`NcclComm::wait`]) sees it finish.
    fn nccl_started(&self, op: &'static str, rank: usize, code: c_int) -> Result<(), CollectiveError> {
        if code == NCCL_SUCCESS || code == NCCL_IN_PROGRESS {
            return Ok(());
        }
        self.nccl_error(op, rank, code)
    }

    fn nccl_error(&self, op: &'static str, rank: usize, code: c_int) -> Result<(), CollectiveError> {
        // SAFETY: ncclGetErrorString returns a static NUL-terminated string for any code.
        let msg = unsafe { CStr::from_ptr((self.nccl_get_error_string)(code)) }.to_string_lossy();
        Err(CollectiveError::Backend { op, rank, why: format!("NCCL error {code}: {msg}") })
    }

    fn cuda(&self, op: &'static str, rank: usize, code: c_int) -> Result<(), CollectiveError> {
        if code == CUDA_SUCCESS {
            return Ok(());
        }
        // SAFETY: cudaGetErrorString returns a static NUL-terminated string for any code.
        let msg = unsafe { CStr::from_ptr((self.cuda_get_error_string)(code)) }.to_string_lossy();
        Err(CollectiveError::Backend { op, rank, why: format!("CUDA error {code}: {msg}") })
    }
}

/// The loaded NCCL version (`major * 10000 + minor * 100 + patch` for NCCL >= 2.9), or why NCCL
/// cannot be used here.
pub fn nccl_version() -> Result<i32, CollectiveError> {
    let api = Api::get().map_err(|why| CollectiveError::Backend { op: "nccl", rank: 0, why })?;
    let mut v = 0;
    // SAFETY: writes one int.
    api.nccl("ncclGetVersion", 0, unsafe { (api.nccl_get_version)(&mut v) })?;
    Ok(v)
}

/// One point-to-point step of an all-to-all on one rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Copy `bytes` from `send[src..]` to `recv[dst..]` on this rank (its own chunk).
    Copy { src: usize, dst: usize, bytes: usize },
    /// Send `send[src..src + bytes]` to `peer` and receive `recv[dst..dst + bytes]` from it.
    Exchange { peer: usize, src: usize, dst: usize, bytes: usize },
}

/// The all-to-all of `rank` in a group of `world` ranks with `chunk`-byte chunks: its own chunk
/// copied, then one send/receive pair with every other rank, peers in the order `rank + 1, rank +
/// 2, ...` (mod `world`) so that no rank is every rank's first peer. Chunk `j` of `send` goes to
/// rank `j`; chunk `i` of `recv` comes from rank `i`. Inside one NCCL group the order does not
/// affect the result, only how the traffic spreads.
pub fn all_to_all_schedule(rank: usize, world: usize, chunk: usize) -> Vec<Step> {
    let mut steps = vec![Step::Copy { src: rank * chunk, dst: rank * chunk, bytes: chunk }];
    for k in 1..world {
        let peer = (rank + k) % world;
        steps.push(Step::Exchange { peer, src: peer * chunk, dst: peer * chunk, bytes: chunk });
    }
    steps
}

/// The all-to-all size rule: `send` and `recv` are both `world * chunk` bytes. Returns `chunk`.
pub fn all_to_all_chunk(rank: usize, world: usize, send: usize, recv: usize) -> Result<usize, CollectiveError> {
    let shape = |why: String| CollectiveError::Shape { op: "all_to_all", rank, why };
    if send != recv {
        return Err(shape(format!("send is {send} bytes but recv is {recv}; they must be equal")));
    }
    if send % world != 0 {
        return Err(shape(format!("{send} bytes do not split into {world} equal chunks")));
    }
    Ok(send / world)
}

/// The all-gather size rule: `recv` is `world * send` bytes.
pub fn all_gather_check(rank: usize, world: usize, send: usize, recv: usize) -> Result<(), CollectiveError> {
    if recv != world * send {
        return Err(CollectiveError::Shape {
            op: "all_gather",
            rank,
            why: format!("recv is {recv} bytes; it must be {world} x send ({send} bytes) = {}", world * send),
        });
    }
    Ok(())
}

/// The all-to-all by definition, on the host: `sends[i]` is rank `i`'s send buffer; returns each
/// rank's receive buffer. The reference NCCL results are compared with.
pub fn reference_all_to_all(sends: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let world = sends.len();
    let chunk = sends.first().map_or(0, |s| s.len() / world.max(1));
    (0..world)
        .map(|r| (0..world).flat_map(|i| sends[i][r * chunk..(r + 1) * chunk].iter().copied()).collect())
        .collect()
}

/// Who aborted a group, shared by its ranks.
#[derive(Default)]
struct AbortFlag {
    raised: AtomicBool,
    by: Mutex<Option<(usize, String)>>,
}

impl AbortFlag {
    fn raise(&self, rank: usize, why: &str) {
        let mut by = self.by.lock().unwrap_or_else(|p| p.into_inner());
        if by.is_none() {
            *by = Some((rank, why.to_string()));
        }
        self.raised.store(true, Ordering::Release);
    }

    fn error(&self) -> Option<CollectiveError> {
        if !self.raised.load(Ordering::Acquire) {
            return None;
        }
        let by = self.by.lock().unwrap_or_else(|p| p.into_inner());
        let (rank, why) = by.clone().unwrap_or((usize::MAX, String::new()));
        Some(CollectiveError::Aborted { rank, why })
    }
}

/// A communicator handle and its stream; `None` once aborted or destroyed.
struct Handle {
    comm: Comm,
    stream: Stream,
    live: bool,
}

/// One rank of an NCCL group (see the module docs).
pub struct NcclComm {
    api: &'static Api,
    rank: usize,
    world: usize,
    device: i32,
    handle: Mutex<Handle>,
    abort: Arc<AbortFlag>,
}

// SAFETY: the communicator and stream pointers are only used under `handle`'s lock, and NCCL
// allows a communicator to be used from any thread as long as calls on it are not concurrent.
unsafe impl Send for NcclComm {}
unsafe impl Sync for NcclComm {}

/// Device memory freed on drop.
struct DeviceAlloc {
    api: &'static Api,
    ptr: *mut c_void,
}

impl Drop for DeviceAlloc {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr` came from cudaMalloc and is freed once; the stream that used it was
            // synchronised (or aborted) before the drop.
            unsafe { (self.api.cuda_free)(self.ptr) };
        }
    }
}

impl NcclComm {
    /// Makes one communicator per device of `devices` (rank `i` on `devices[i]`), all in this
    /// process. NCCL needs one GPU per rank: a device listed twice is an error.
    pub fn init_all(devices: &[i32]) -> Result<Vec<NcclComm>, CollectiveError> {
        let fail = |why: String| CollectiveError::Backend { op: "nccl init", rank: 0, why };
        if devices.is_empty() {
            return Err(fail("no devices given".into()));
        }
        for (i, d) in devices.iter().enumerate() {
            if devices[..i].contains(d) {
                return Err(fail(format!("CUDA device {d} is listed twice; NCCL needs one GPU per rank")));
            }
        }
        let api = Api::get().map_err(fail)?;
        let mut count = 0;
        // SAFETY: writes one int.
        api.cuda("cudaGetDeviceCount", 0, unsafe { (api.cuda_get_device_count)(&mut count) })?;
        if let Some(bad) = devices.iter().find(|&&d| d < 0 || d >= count) {
            return Err(fail(format!("CUDA device {bad} does not exist ({count} visible)")));
        }
        let comms = Self::init_non_blocking(api, devices)?;
        let abort = Arc::new(AbortFlag::default());
        let mut out = Vec::with_capacity(devices.len());
        for (rank, (&device, comm)) in devices.iter().zip(comms).enumerate() {
            // Built before the fallible stream creation so that a failure still destroys it.
            let mut c = NcclComm {
                api,
                rank,
                world: devices.len(),
                device,
                handle: Mutex::new(Handle { comm, stream: std::ptr::null_mut(), live: true }),
                abort: abort.clone(),
            };
            let mut stream = std::ptr::null_mut();
            // SAFETY: selects this rank's device, then creates a stream on it.
            api.cuda("cudaSetDevice", rank, unsafe { (api.cuda_set_device)(device) })?;
            api.cuda("cudaStreamCreate", rank, unsafe {
                (api.cuda_stream_create_with_flags)(&mut stream, CUDA_STREAM_NON_BLOCKING)
            })?;
            c.handle.get_mut().unwrap_or_else(|p| p.into_inner()).stream = stream;
            out.push(c);
        }
        tracing::info!(devices = ?devices, "NCCL communicators ready");
        Ok(out)
    }

    /// One non-blocking communicator per device, made in one NCCL group and awaited (initialisation
    /// connects the ranks). A failure aborts the communicators already made.
    fn init_non_blocking(api: &'static Api, devices: &[i32]) -> Result<Vec<Comm>, CollectiveError> {
        const OP: &str = "ncclCommInitRankConfig";
        let mut id = UniqueId { internal: [0; 128] };
        // SAFETY: writes one ncclUniqueId.
        api.nccl("ncclGetUniqueId", 0, unsafe { (api.nccl_get_unique_id)(&mut id) })?;
        let mut comms: Vec<Comm> = vec![std::ptr::null_mut(); devices.len()];
        let mut configs = vec![Config::non_blocking(); devices.len()];
        let abort_made = |comms: &[Comm]| {
            for &c in comms.iter().filter(|c| !c.is_null()) {
                // SAFETY: a communicator made above and not used afterwards.
                unsafe { (api.nccl_comm_abort)(c) };
            }
        };
        // SAFETY: group calls; each init writes one handle of `comms` and reads its config, both
        // alive until the communicators are ready.
        api.nccl("ncclGroupStart", 0, unsafe { (api.nccl_group_start)() })?;
        let mut result = Ok(());
        for (rank, &device) in devices.iter().enumerate() {
            result = result
                .and_then(|()| api.cuda("cudaSetDevice", rank, unsafe { (api.cuda_set_device)(device) }))
                .and_then(|()| {
                    api.nccl_started(OP, rank, unsafe {
                        (api.nccl_comm_init_rank_config)(
                            &mut comms[rank],
                            devices.len() as c_int,
                            id,
                            rank as c_int,
                            &mut configs[rank],
                        )
                    })
                });
        }
        let ended = api.nccl_started("ncclGroupEnd", 0, unsafe { (api.nccl_group_end)() });
        if let Err(e) = result.and(ended) {
            abort_made(&comms);
            return Err(e);
        }
        for (rank, &comm) in comms.iter().enumerate() {
            loop {
                let mut state = NCCL_SUCCESS;
                // SAFETY: writes one int for a communicator being made.
                let queried = api.nccl(OP, rank, unsafe { (api.nccl_comm_get_async_error)(comm, &mut state) });
                match queried.and_then(|()| api.nccl_started(OP, rank, state)) {
                    Ok(()) if state == NCCL_IN_PROGRESS => std::thread::sleep(Duration::from_micros(100)),
                    Ok(()) => break,
                    Err(e) => {
                        abort_made(&comms);
                        return Err(e);
                    }
                }
            }
        }
        drop(configs);
        Ok(comms)
    }

    pub fn device(&self) -> i32 {
        self.device
    }

    /// Runs `enqueue` (which queues work on the stream and returns what that work uses, e.g.
    /// staging buffers) and waits for the stream, watching the group's abort flag and NCCL's
    /// asynchronous error; what `enqueue` returned is kept until then.
    fn run<T>(
        &self,
        op: &'static str,
        enqueue: impl FnOnce(&'static Api, Comm, Stream) -> Result<T, CollectiveError>,
    ) -> Result<T, CollectiveError> {
        let mut h = self.handle.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = self.abort.error() {
            self.abort_handle(&mut h);
            return Err(e);
        }
        if !h.live {
            return Err(CollectiveError::Backend { op, rank: self.rank, why: "the communicator was aborted".into() });
        }
        let api = self.api;
        // SAFETY: selects this rank's device for the calls below (per-thread state).
        api.cuda(op, self.rank, unsafe { (api.cuda_set_device)(self.device) })?;
        let queued = enqueue(api, h.comm, h.stream);
        let waited = queued.and_then(|kept| self.wait(op, &h).map(|()| kept));
        if let Err(e) = &waited {
            if !matches!(e, CollectiveError::Shape { .. } | CollectiveError::Unsupported { .. }) {
                self.abort_handle(&mut h);
            }
        }
        waited
    }

    /// Waits until the communicator has enqueued what was started on it (`ncclCommGetAsyncError`
    /// leaves `ncclInProgress`), then until the stream is done; the abort flag is checked on every
    /// turn.
    fn wait(&self, op: &'static str, h: &Handle) -> Result<(), CollectiveError> {
        let api = self.api;
        let mut spins = 0u32;
        loop {
            let mut async_err = NCCL_SUCCESS;
            // SAFETY: writes one int for this rank's live communicator.
            api.nccl(op, self.rank, unsafe { (api.nccl_comm_get_async_error)(h.comm, &mut async_err) })?;
            api.nccl_started(op, self.rank, async_err)?;
            if async_err == NCCL_SUCCESS {
                // SAFETY: queries this rank's live stream.
                match unsafe { (api.cuda_stream_query)(h.stream) } {
                    CUDA_SUCCESS => return Ok(()),
                    CUDA_NOT_READY => {}
                    code => api.cuda(op, self.rank, code)?,
                }
            }
            if let Some(e) = self.abort.error() {
                return Err(e);
            }
            spins += 1;
            if spins < 1000 {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
    }

    /// `ncclCommAbort` on this rank's communicator (once).
    fn abort_handle(&self, h: &mut Handle) {
        if h.live {
            h.live = false;
            // SAFETY: aborts and frees this rank's communicator, which is not used afterwards.
            unsafe { (self.api.nccl_comm_abort)(h.comm) };
        }
    }

    /// A device pointer holding `buf` (on this rank's device), staging host bytes through a
    /// device allocation queued on `stream`.
    fn device_src(
        &self,
        op: &'static str,
        buf: &Buffer<'_>,
        stream: Stream,
    ) -> Result<(*const c_void, Option<DeviceAlloc>), CollectiveError> {
        match buf {
            Buffer::Cuda { device, ptr, .. } => {
                self.check_device(op, *device)?;
                Ok((*ptr as *const c_void, None))
            }
            Buffer::Host(bytes) => {
                let alloc = self.alloc(op, bytes.len())?;
                // SAFETY: copies `bytes.len()` bytes into a fresh allocation of that size; the
                // host slice outlives the call, which is awaited before returning.
                self.api.cuda(op, self.rank, unsafe {
                    (self.api.cuda_memcpy_async)(
                        alloc.ptr,
                        bytes.as_ptr().cast(),
                        bytes.len(),
                        MEMCPY_HOST_TO_DEVICE,
                        stream,
                    )
                })?;
                Ok((alloc.ptr as *const c_void, Some(alloc)))
            }
        }
    }

    fn device_dst(
        &self,
        op: &'static str,
        buf: &BufferMut<'_>,
    ) -> Result<(*mut c_void, Option<DeviceAlloc>), CollectiveError> {
        match buf {
            BufferMut::Cuda { device, ptr, .. } => {
                self.check_device(op, *device)?;
                Ok((*ptr as *mut c_void, None))
            }
            BufferMut::Host(bytes) => {
                let alloc = self.alloc(op, bytes.len())?;
                Ok((alloc.ptr, Some(alloc)))
            }
        }
    }

    fn check_device(&self, op: &'static str, device: i32) -> Result<(), CollectiveError> {
        if device != self.device {
            return Err(CollectiveError::Unsupported {
                op,
                rank: self.rank,
                why: format!("buffer on CUDA device {device}, this rank runs on device {}", self.device),
            });
        }
        Ok(())
    }

    fn alloc(&self, op: &'static str, bytes: usize) -> Result<DeviceAlloc, CollectiveError> {
        let mut ptr = std::ptr::null_mut();
        // SAFETY: allocates at least one byte so that the pointer is valid even for empty buffers.
        self.api.cuda(op, self.rank, unsafe { (self.api.cuda_malloc)(&mut ptr, bytes.max(1)) })?;
        Ok(DeviceAlloc { api: self.api, ptr })
    }

    /// Copies a staged result back into host memory and waits for it.
    fn copy_back(
        &self,
        op: &'static str,
        recv: BufferMut<'_>,
        staged: Option<DeviceAlloc>,
    ) -> Result<(), CollectiveError> {
        let (BufferMut::Host(bytes), Some(staged)) = (recv, staged) else { return Ok(()) };
        self.run(op, |api, _, stream| {
            // SAFETY: copies the staged device bytes into the host slice of the same length;
            // awaited by `run` before the slice is released.
            api.cuda(op, self.rank, unsafe {
                (api.cuda_memcpy_async)(
                    bytes.as_mut_ptr().cast(),
                    staged.ptr,
                    bytes.len(),
                    MEMCPY_DEVICE_TO_HOST,
                    stream,
                )
            })
        })
    }
}

impl Collective for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_to_all(&self, send: Buffer<'_>, recv: BufferMut<'_>) -> Result<(), CollectiveError> {
        const OP: &str = "all_to_all";
        let chunk = all_to_all_chunk(self.rank, self.world, send.len(), recv.len())?;
        if chunk == 0 {
            return self.abort.error().map_or(Ok(()), Err);
        }
        let (_staged_src, staged_dst) = self.run(OP, |api, comm, stream| {
            let (src, staged_src) = self.device_src(OP, &send, stream)?;
            let (dst, staged_dst) = self.device_dst(OP, &recv)?;
            for step in all_to_all_schedule(self.rank, self.world, chunk) {
                if let Step::Copy { src: s, dst: d, bytes } = step {
                    // SAFETY: in-bounds ranges of the two buffers (the size rule was checked).
                    api.cuda(OP, self.rank, unsafe {
                        (api.cuda_memcpy_async)(
                            dst.cast::<u8>().add(d).cast(),
                            src.cast::<u8>().add(s).cast(),
                            bytes,
                            MEMCPY_DEVICE_TO_DEVICE,
                            stream,
                        )
                    })?;
                }
            }
            // SAFETY: group calls; every pointer range is in bounds of its buffer.
            api.nccl(OP, self.rank, unsafe { (api.nccl_group_start)() })?;
            let mut result = Ok(());
            for step in all_to_all_schedule(self.rank, self.world, chunk) {
                if let Step::Exchange { peer, src: s, dst: d, bytes } = step {
                    result = result
                        .and_then(|()| {
                            api.nccl_started(OP, self.rank, unsafe {
                                (api.nccl_send)(
                                    src.cast::<u8>().add(s).cast(),
                                    bytes,
                                    NCCL_UINT8,
                                    peer as c_int,
                                    comm,
                                    stream,
                                )
                            })
                        })
                        .and_then(|()| {
                            api.nccl_started(OP, self.rank, unsafe {
                                (api.nccl_recv)(
                                    dst.cast::<u8>().add(d).cast(),
                                    bytes,
                                    NCCL_UINT8,
                                    peer as c_int,
                                    comm,
                                    stream,
                                )
                            })
                        });
                }
            }
            // The group is always closed, even after a failed call inside it.
            let ended = api.nccl_started(OP, self.rank, unsafe { (api.nccl_group_end)() });
            result.and(ended)?;
            Ok((staged_src, staged_dst))
        })?;
        self.copy_back(OP, recv, staged_dst)
    }

    fn all_gather(&self, send: Buffer<'_>, recv: BufferMut<'_>) -> Result<(), CollectiveError> {
        const OP: &str = "all_gather";
        all_gather_check(self.rank, self.world, send.len(), recv.len())?;
        if send.is_empty() {
            return self.abort.error().map_or(Ok(()), Err);
        }
        let (_staged_src, staged_dst) = self.run(OP, |api, comm, stream| {
            let (src, staged_src) = self.device_src(OP, &send, stream)?;
            let (dst, staged_dst) = self.device_dst(OP, &recv)?;
            // SAFETY: `recv` holds `world * send.len()` bytes (checked above).
            api.nccl_started(OP, self.rank, unsafe {
                (api.nccl_all_gather)(src, dst, send.len(), NCCL_UINT8, comm, stream)
            })?;
            Ok((staged_src, staged_dst))
        })?;
        self.copy_back(OP, recv, staged_dst)
    }

    fn abort(&self, why: &str) {
        tracing::warn!(rank = self.rank, why, "aborting the NCCL group");
        self.abort.raise(self.rank, why);
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        let h = self.handle.get_mut().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the last use of this rank's stream and communicator.
        unsafe {
            if !h.stream.is_null() {
                (self.api.cuda_stream_destroy)(h.stream);
            }
            if h.live {
                (self.api.nccl_comm_destroy)(h.comm);
            }
        }
    }
}

/// Runs an all-to-all and an all-gather of `bytes`-byte buffers (a seeded byte pattern per rank)
/// over NCCL on `devices`, one thread per rank, and compares every rank's result bit for bit with
/// the definition ([`reference_all_to_all`], the concatenation for all-gather). `bytes` is
/// rounded down to a multiple of the world size. The GPU check (`scripts/gpu_check.sh`) runs it.
pub fn check_against_reference(devices: &[i32], bytes: usize) -> Result<(), CollectiveError> {
    let comms = NcclComm::init_all(devices)?;
    let world = comms.len();
    let bytes = bytes / world * world;
    let sends: Vec<Vec<u8>> = (0..world)
        .map(|r| {
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (r as u64 + 1);
            (0..bytes)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 56) as u8
                })
                .collect()
        })
        .collect();
    let expected_a2a = reference_all_to_all(&sends);
    let expected_gather: Vec<u8> = sends.concat();
    let results: Vec<Result<(Vec<u8>, Vec<u8>), CollectiveError>> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .iter()
            .zip(&sends)
            .map(|(comm, send)| {
                s.spawn(move || {
                    let mut a2a = vec![0u8; send.len()];
                    comm.all_to_all(Buffer::Host(send), BufferMut::Host(&mut a2a))?;
                    let mut gather = vec![0u8; send.len() * comm.world_size()];
                    comm.all_gather(Buffer::Host(send), BufferMut::Host(&mut gather))?;
                    Ok((a2a, gather))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a rank thread panicked")).collect()
    });
    for (rank, result) in results.into_iter().enumerate() {
        let (a2a, gather) = result?;
        let mismatch = |op: &'static str, got: &[u8], want: &[u8]| {
            let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
            CollectiveError::Backend { op, rank, why: format!("differs from the reference at byte {at}") }
        };
        if a2a != expected_a2a[rank] {
            return Err(mismatch("all_to_all", &a2a, &expected_a2a[rank]));
        }
        if gather != expected_gather {
            return Err(mismatch("all_gather", &gather, &expected_gather));
        }
    }
    tracing::info!(world, bytes, "NCCL collectives match the reference bit for bit");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs every rank's schedule on host memory, pairing each send with the peer's receive.
    fn simulate(world: usize, chunk: usize) -> Vec<Vec<u8>> {
        let sends: Vec<Vec<u8>> =
            (0..world).map(|r| (0..world * chunk).map(|i| (r * 31 + i * 7) as u8).collect()).collect();
        let mut recvs = vec![vec![0u8; world * chunk]; world];
        for rank in 0..world {
            let steps = all_to_all_schedule(rank, world, chunk);
            assert_eq!(steps.len(), world, "one copy and world - 1 exchanges");
            for step in steps {
                match step {
                    Step::Copy { src, dst, bytes } => {
                        recvs[rank][dst..dst + bytes].copy_from_slice(&sends[rank][src..src + bytes])
                    }
                    Step::Exchange { peer, src, bytes, .. } => {
                        // The peer's matching step receives from `rank` what `rank` sends it.
                        let back = all_to_all_schedule(peer, world, chunk)
                            .into_iter()
                            .find_map(|s| match s {
                                Step::Exchange { peer: p, dst, bytes: b, .. } if p == rank => Some((dst, b)),
                                _ => None,
                            })
                            .expect("every send has a matching receive");
                        assert_eq!(back.1, bytes);
                        recvs[peer][back.0..back.0 + bytes].copy_from_slice(&sends[rank][src..src + bytes]);
                    }
                }
            }
        }
        assert_eq!(recvs, reference_all_to_all(&sends));
        recvs
    }

    #[test]
    fn the_send_recv_schedule_is_the_all_to_all() {
        for world in 1..=5 {
            for chunk in [0, 1, 3, 8] {
                simulate(world, chunk);
            }
        }
        // Peers rotate: no rank is everyone's first partner.
        let firsts: Vec<usize> = (0..4)
            .map(|r| match all_to_all_schedule(r, 4, 1)[1] {
                Step::Exchange { peer, .. } => peer,
                s => panic!("{s:?}"),
            })
            .collect();
        assert_eq!(firsts, [1, 2, 3, 0]);
    }

    #[test]
    fn the_reference_is_the_definition() {
        let sends = vec![vec![0, 1, 2, 3], vec![10, 11, 12, 13]];
        assert_eq!(reference_all_to_all(&sends), vec![vec![0, 1, 10, 11], vec![2, 3, 12, 13]]);
    }

    #[test]
    fn size_rules_name_the_operation_and_rank() {
        assert_eq!(all_to_all_chunk(1, 4, 32, 32).unwrap(), 8);
        let e = all_to_all_chunk(1, 4, 32, 16).unwrap_err().to_string();
        assert!(e.contains("all_to_all on rank 1") && e.contains("must be equal"), "{e}");
        let e = all_to_all_chunk(0, 3, 10, 10).unwrap_err().to_string();
        assert!(e.contains("3 equal chunks"), "{e}");
        assert!(all_gather_check(0, 3, 4, 12).is_ok());
        let e = all_gather_check(2, 3, 4, 8).unwrap_err().to_string();
        assert!(e.contains("all_gather on rank 2") && e.contains("= 12"), "{e}");
    }

    #[test]
    fn a_missing_library_is_an_error_not_a_panic() {
        let e = Api::load_from(&["/nonexistent/libnccl.so.2".into(), "libnccl-osp-missing.so".into()], &[])
            .err()
            .expect("no such library");
        assert!(e.starts_with("NCCL library not found (searched: /nonexistent/libnccl.so.2"), "{e}");
        assert!(e.contains("libnccl-osp-missing.so") && e.contains("OSP_NCCL_LIBRARY"), "{e}");
        // A library that loads but is not NCCL: the missing symbol is named.
        let e = Api::load_from(&["libm.so.6".into()], &["libm.so.6".into()]).err().expect("libm is not NCCL");
        assert!(e.contains("symbol `ncclGetVersion` missing"), "{e}");
    }

    #[test]
    fn the_config_is_nccls_non_blocking_initializer() {
        let c = Config::non_blocking();
        // NCCL 2.17's `ncclConfig_t` on LP64: size_t, 2 x unsigned, 4 x int, a pointer, an int.
        assert_eq!(std::mem::size_of::<Config>(), 48);
        assert_eq!(std::mem::offset_of!(Config, net_name), 32);
        assert_eq!((c.size, c.magic, c.version, c.blocking), (48, 0xcafe_beef, 21700, 0));
        assert_eq!([c.cga_cluster_size, c.min_ctas, c.max_ctas, c.split_share], [c_int::MIN; 4]);
        assert!(c.net_name.is_null());
        assert_eq!(std::mem::size_of::<UniqueId>(), 128);
    }

    #[test]
    fn init_reports_instead_of_panicking() {
        // On a host without NCCL (CI) this is the library error; on a GPU host, a working group.
        match NcclComm::init_all(&[0]) {
            Ok(comms) => assert_eq!((comms.len(), comms[0].rank(), comms[0].world_size()), (1, 0, 1)),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        let e = NcclComm::init_all(&[0, 0]).err().expect("a device twice").to_string();
        assert!(e.contains("listed twice"), "{e}");
        assert!(NcclComm::init_all(&[]).is_err());
    }
}
