//! The sequence-parallel (DeepSpeed-Ulysses) and CFG-parallel DiT executor: one worker thread per
//! rank, each with its own sessions of the bundle's segment graphs, following the protocol the
//! manifest records ([`osp_graphs::dit_parallel`]). It takes the single `transformer` graph's
//! inputs and returns its `sample`, equal to it within `Close`.
//!
//! A rank whose segment fails (or panics) aborts the collective; every other rank returns at its
//! next exchange, and the error names the failing rank and segment.
//!
//! [`RankProbe`] runs one rank alone (its peers' shards zeros) to measure what a rank costs.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use ndarray::{concatenate, ArrayD, Axis, IxDyn, Slice};
use osp_graphs::dit_parallel::{io, DitSegments, FrameSplit};

use super::collective::{Buffer, BufferMut, Collective, CollectiveError};
use super::host::HostWorld;
use crate::engine::Resident;
use crate::error::{Error, Result};
use crate::session::{Bundle, GraphSession, SessionOptions};
use crate::tensor::Tensor;

/// How the ranks split the work: `cfg_groups` (1, or 2 with `--cfg-parallel`) groups of `sp`
/// sequence ranks; world rank `g * sp + s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParallelPlan {
    pub sp: usize,
    pub cfg_groups: usize,
}

impl ParallelPlan {
    pub fn world(&self) -> usize {
        self.sp * self.cfg_groups
    }

    /// The plan's rules for a call on `batch` rows of `frames` latent frames; `Err` names the flag.
    pub fn check(&self, protocol: &DitSegments, batch: usize, frames: usize) -> Result<FrameSplit> {
        if self.cfg_groups == 0 || batch % self.cfg_groups != 0 {
            return Err(invalid(
                "--cfg-parallel",
                format!("the guidance batch of {batch} rows must split evenly over {} groups", self.cfg_groups),
            ));
        }
        protocol.split(self.sp, frames).map_err(|rule| invalid("--sp", rule))
    }
}

fn invalid(name: &str, rule: String) -> Error {
    Error::InvalidInput { name: name.to_string(), rule }
}

/// The rules of a plan that hold for every call: at least one rank, and the degree divides the heads.
fn check_plan(protocol: &DitSegments, plan: ParallelPlan) -> Result<()> {
    if plan.sp == 0 || plan.cfg_groups == 0 {
        return Err(invalid("--sp", "the degree and the CFG groups must be at least 1".into()));
    }
    if protocol.heads % plan.sp != 0 {
        return Err(invalid(
            "--sp",
            format!("the sequence-parallel degree must divide the {} attention heads, got {}", protocol.heads, plan.sp),
        ));
    }
    protocol.check_degree(plan.sp).map_err(|rule| invalid("--sp", rule))
}

/// Makes the communicators of a run: `groups` groups of `size` ranks, world rank order.
pub type WorldFactory = fn(groups: usize, size: usize) -> Vec<Box<dyn Collective>>;

fn host_world(groups: usize, size: usize) -> Vec<Box<dyn Collective>> {
    HostWorld::groups(groups, size).into_iter().map(|c| Box::new(c) as Box<dyn Collective>).collect()
}

/// Seconds one rank spent per segment kind (`pre`, `qkv`, `pack`, `core_full`, `unpack`, `post`, `final`, ...) and
/// in each exchange (`all_to_all`, `all_gather`), summed over the last call.
#[derive(Debug, Clone, Default)]
pub struct RankTimings {
    pub compute: BTreeMap<String, f64>,
    pub exchange: BTreeMap<String, f64>,
}

/// The executor (see the module docs).
pub struct ParallelDit {
    protocol: DitSegments,
    plan: ParallelPlan,
    ranks: Vec<BTreeMap<String, GraphSession>>,
    world: WorldFactory,
    timings: Vec<RankTimings>,
    totals: Vec<RankTimings>,
    calls: usize,
    fault: Option<(usize, String)>,
}

impl std::fmt::Debug for ParallelDit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelDit").field("plan", &self.plan).field("layers", &self.protocol.layers.len()).finish()
    }
}

/// A rank's failure before it is named.
struct Failure {
    segment: String,
    error: Error,
}

impl Failure {
    /// The error of world rank `rank` of `plan`, naming the rank and the segment.
    fn of_rank(self, rank: usize, plan: ParallelPlan) -> Error {
        Error::Rank {
            rank,
            cfg_group: rank / plan.sp,
            sp_rank: rank % plan.sp,
            segment: self.segment,
            source: Box::new(self.error),
        }
    }
}

fn at(segment: &str) -> impl Fn(Error) -> Failure + '_ {
    move |error| Failure { segment: segment.to_string(), error }
}

fn take<T>(out: &mut BTreeMap<String, T>, graph: &str, name: &str) -> Result<T> {
    out.remove(name).ok_or_else(|| Error::MissingOutput {
        graph: graph.to_string(),
        output: name.to_string(),
        produced: out.keys().cloned().collect::<Vec<_>>().join(", "),
    })
}

fn input<'a>(inputs: &[(&str, &'a Tensor)], name: &str) -> Result<&'a ArrayD<f32>> {
    let t = inputs
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| invalid(name, "missing input of the parallel DiT".into()))?
        .1;
    f32_of(t, name)
}

fn f32_of<'a>(t: &'a Tensor, what: &str) -> Result<&'a ArrayD<f32>> {
    t.as_f32().ok_or_else(|| invalid(what, format!("must be f32, got {}", t.dtype())))
}

impl ParallelDit {
    /// Loads every segment graph of `bundle` once per rank, rank `k` with `rank_opts[k]` (its
    /// device). The bundle's weight pool is shared by the CPU ranks.
    pub fn load(bundle: &Bundle, plan: ParallelPlan, rank_opts: &[SessionOptions]) -> Result<Self> {
        let protocol = Self::protocol_of(bundle)?;
        check_plan(&protocol, plan)?;
        if rank_opts.len() != plan.world() {
            return Err(invalid(
                "--devices",
                format!(
                    "{} ranks ({} CFG groups x --sp {}) need {} devices, got {}",
                    plan.world(),
                    plan.cfg_groups,
                    plan.sp,
                    plan.world(),
                    rank_opts.len()
                ),
            ));
        }
        let mut ranks = Vec::with_capacity(plan.world());
        for opts in rank_opts {
            let mut sessions = BTreeMap::new();
            for name in protocol.graph_names(plan.sp) {
                sessions.insert(name.clone(), bundle.session(&name, opts)?);
            }
            ranks.push(sessions);
        }
        Ok(Self { protocol, plan, ranks, world: host_world, timings: vec![], totals: vec![], calls: 0, fault: None })
    }

    /// The bundle's segment protocol; an error when the bundle was exported without segments.
    pub fn protocol_of(bundle: &Bundle) -> Result<DitSegments> {
        DitSegments::read(&bundle.manifest().graphs)?.ok_or_else(|| {
            invalid(
                "--sp",
                format!(
                    "bundle {} has no sequence-parallel segment graphs (re-export it with this osp-export)",
                    bundle.dir().display()
                ),
            )
        })
    }

    /// Uses `world` to make the communicators (the default is the in-process host collective).
    pub fn with_world(mut self, world: WorldFactory) -> Self {
        self.world = world;
        self
    }

    pub fn plan(&self) -> ParallelPlan {
        self.plan
    }

    pub fn protocol(&self) -> &DitSegments {
        &self.protocol
    }

    /// Per-rank timings of the last [`Self::run`].
    pub fn timings(&self) -> &[RankTimings] {
        &self.timings
    }

    /// Per-rank timings summed over every call since the last [`Self::reset_timings`], and the
    /// number of calls.
    pub fn timing_totals(&self) -> (&[RankTimings], usize) {
        (&self.totals, self.calls)
    }

    pub fn reset_timings(&mut self) {
        self.totals.clear();
        self.calls = 0;
    }

    /// Test hook: rank `rank` fails with an error instead of running `segment` (a graph name).
    #[doc(hidden)]
    pub fn inject_fault(&mut self, rank: usize, segment: &str) {
        self.fault = Some((rank, segment.to_string()));
    }

    /// Runs on the single graph's inputs (`hidden_states`, `timestep`, `encoder_hidden_states`,
    /// `encoder_attention_mask`) and returns its `sample`.
    pub fn run(&mut self, inputs: &[(&str, &Tensor)]) -> Result<ArrayD<f32>> {
        let shards = Shards::of(&self.protocol, self.plan, inputs)?;
        let (split, frames, plan) = (shards.split, shards.frames, self.plan);
        let rank_inputs: Vec<RankInputs> = (0..plan.world()).map(|k| shards.rank(k)).collect();

        let comms = (self.world)(plan.cfg_groups, plan.sp);
        let protocol = &self.protocol;
        let fault = self.fault.clone();
        let grid = &shards.grid;
        let results: Vec<(std::result::Result<Option<ArrayD<f32>>, Failure>, RankTimings)> =
            std::thread::scope(|scope| {
                let joins: Vec<_> = self
                    .ranks
                    .iter_mut()
                    .zip(comms.iter())
                    .zip(rank_inputs.iter())
                    .enumerate()
                    .map(|(k, ((sessions, comm), inputs))| {
                        let fault = fault.as_ref().filter(|(r, _)| *r == k).map(|(_, s)| s.as_str());
                        let comm: &dyn Collective = comm.as_ref();
                        scope.spawn(move || {
                            let mut timings = RankTimings::default();
                            let res = catch_unwind(AssertUnwindSafe(|| {
                                run_rank(protocol, split, sessions, comm, inputs, grid, fault, &mut timings)
                            }))
                            .unwrap_or_else(|panic| {
                                let why = panic
                                    .downcast_ref::<String>()
                                    .cloned()
                                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                                    .unwrap_or_else(|| "a panic".into());
                                Err(Failure { segment: "(panic)".into(), error: invalid("rank worker", why) })
                            });
                            if let Err(f) = &res {
                                if !matches!(f.error, Error::Collective(CollectiveError::Aborted { .. })) {
                                    comm.abort(&format!("segment `{}` failed: {}", f.segment, f.error));
                                }
                            }
                            (res, timings)
                        })
                    })
                    .collect();
                joins.into_iter().map(|j| j.join().expect("rank workers catch their panics")).collect()
            });

        let mut gathered = Vec::new();
        let mut first_failure: Option<(usize, Failure)> = None;
        let mut timings = Vec::with_capacity(results.len());
        for (k, (res, t)) in results.into_iter().enumerate() {
            timings.push(t);
            match res {
                Ok(Some(a)) => gathered.push(a),
                Ok(None) => {}
                Err(f) => {
                    let secondary = matches!(f.error, Error::Collective(CollectiveError::Aborted { .. }));
                    let replace = match &first_failure {
                        None => true,
                        Some((_, prev)) => {
                            secondary == false
                                && matches!(prev.error, Error::Collective(CollectiveError::Aborted { .. }))
                        }
                    };
                    if replace {
                        first_failure = Some((k, f));
                    }
                }
            }
        }
        if first_failure.is_none() {
            self.totals.resize_with(timings.len(), RankTimings::default);
            for (total, t) in self.totals.iter_mut().zip(&timings) {
                for (k, v) in &t.compute {
                    *total.compute.entry(k.clone()).or_default() += v;
                }
                for (k, v) in &t.exchange {
                    *total.exchange.entry(k.clone()).or_default() += v;
                }
            }
            self.calls += 1;
        }
        self.timings = timings;
        if let Some((rank, f)) = first_failure {
            return Err(f.of_rank(rank, plan));
        }
        // each group's sequence rank 0 returns [P, rows, c, t_local, h, w]
        let mut parts = Vec::with_capacity(gathered.len());
        for a in gathered {
            let s = a.shape().to_vec();
            let a = a.permuted_axes(IxDyn(&[1, 2, 0, 3, 4, 5]));
            let a = a.as_standard_layout().into_owned();
            let a = a
                .into_shape_with_order(IxDyn(&[s[1], s[2], s[0] * s[3], s[4], s[5]]))
                .map_err(|e| invalid("parallel DiT output", e.to_string()))?;
            parts.push(a.slice_axis(Axis(2), Slice::from(0..frames)).to_owned());
        }
        let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
        concatenate(Axis(0), &views).map_err(|e| invalid("parallel DiT output", e.to_string()))
    }
}

/// A call's inputs checked against a plan, and cut into each rank's share.
struct Shards<'a> {
    split: FrameSplit,
    /// Latent frames of the call (before padding).
    frames: usize,
    /// Batch rows per CFG group.
    rows: usize,
    /// `[t, h / patch, w / patch]` of the whole latent.
    grid: Tensor,
    /// `hidden_states` zero-padded in time to `split.padded()` frames.
    padded: ArrayD<f32>,
    timestep: &'a ArrayD<f32>,
    states: &'a ArrayD<f32>,
    mask: &'a ArrayD<f32>,
    sp: usize,
}

impl<'a> Shards<'a> {
    fn of(protocol: &DitSegments, plan: ParallelPlan, inputs: &[(&str, &'a Tensor)]) -> Result<Self> {
        let hidden = input(inputs, io::HIDDEN_STATES)?;
        let timestep = input(inputs, io::TIMESTEP)?;
        let states = input(inputs, io::ENCODER_HIDDEN_STATES)?;
        let mask = input(inputs, io::ENCODER_ATTENTION_MASK)?;
        if hidden.ndim() != 5 {
            return Err(invalid(io::HIDDEN_STATES, format!("must be [b, c, t, h, w], got {:?}", hidden.shape())));
        }
        let (batch, frames) = (hidden.shape()[0], hidden.shape()[2]);
        let split = plan.check(protocol, batch, frames)?;
        let (h, w) = (hidden.shape()[3], hidden.shape()[4]);
        let p = protocol.patch_size;
        if h % p != 0 || w % p != 0 {
            return Err(invalid(
                io::HIDDEN_STATES,
                format!("height {h} and width {w} must be multiples of the patch size {p}"),
            ));
        }
        let grid = Tensor::I64(
            ArrayD::from_shape_vec(IxDyn(&[3]), vec![frames as i64, (h / p) as i64, (w / p) as i64]).expect("3 values"),
        );
        let mut padded_shape = hidden.shape().to_vec();
        padded_shape[2] = split.padded();
        let mut padded = ArrayD::<f32>::zeros(IxDyn(&padded_shape));
        padded.slice_axis_mut(Axis(2), Slice::from(0..frames)).assign(hidden);
        Ok(Self { split, frames, rows: batch / plan.cfg_groups, grid, padded, timestep, states, mask, sp: plan.sp })
    }

    /// World rank `k`'s inputs: its CFG group's batch rows, its sequence rank's latent frames.
    fn rank(&self, k: usize) -> RankInputs {
        let (g, s) = (k / self.sp, k % self.sp);
        let rows = Slice::from(g * self.rows..(g + 1) * self.rows);
        let local = self.split.local;
        let group = self.padded.slice_axis(Axis(0), rows);
        let hidden = group.slice_axis(Axis(2), Slice::from(s * local..(s + 1) * local)).to_owned();
        RankInputs {
            hidden: Tensor::F32(hidden),
            timestep: Tensor::F32(self.timestep.slice_axis(Axis(0), rows).to_owned()),
            states: Tensor::F32(self.states.slice_axis(Axis(0), rows).to_owned()),
            mask: Tensor::F32(self.mask.slice_axis(Axis(0), rows).to_owned()),
        }
    }
}

struct RankInputs {
    hidden: Tensor,
    timestep: Tensor,
    states: Tensor,
    mask: Tensor,
}

/// One rank of a plan run alone, to measure what a rank costs (memory, time) in a process of its
/// own: the sessions of one rank only, and, in place of the peers, a collective that fills their
/// shards with zeros, so that every shape and allocation is the real rank's. Its numbers are all
/// it gives: [`RankProbe::run`] returns timings, never a sample (with zeros for the peers' shards
/// the rank computes no part of the real output). The stand-in collective moves host memory only
/// (ort-cpu ranks); on a CUDA rank the first exchange fails.
pub struct RankProbe {
    protocol: DitSegments,
    plan: ParallelPlan,
    rank: usize,
    sessions: BTreeMap<String, GraphSession>,
}

impl std::fmt::Debug for RankProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RankProbe").field("plan", &self.plan).field("rank", &self.rank).finish()
    }
}

impl RankProbe {
    /// Loads the segment graphs of `bundle` once, for world rank `rank` of `plan`, with `opts`.
    pub fn load(bundle: &Bundle, plan: ParallelPlan, rank: usize, opts: &SessionOptions) -> Result<Self> {
        let protocol = ParallelDit::protocol_of(bundle)?;
        check_plan(&protocol, plan)?;
        if rank >= plan.world() {
            return Err(invalid("rank", format!("must be below the world size {}, got {rank}", plan.world())));
        }
        let mut sessions = BTreeMap::new();
        for name in protocol.graph_names(plan.sp) {
            sessions.insert(name.clone(), bundle.session(&name, opts)?);
        }
        Ok(Self { protocol, plan, rank, sessions })
    }

    /// Runs the rank's share of one DiT call on the single graph's inputs (as [`ParallelDit::run`])
    /// and returns its timings.
    pub fn run(&mut self, inputs: &[(&str, &Tensor)]) -> Result<RankTimings> {
        let shards = Shards::of(&self.protocol, self.plan, inputs)?;
        let comm = ZeroPeers { rank: self.rank % self.plan.sp, world: self.plan.sp };
        let mut timings = RankTimings::default();
        let inputs = shards.rank(self.rank);
        run_rank(&self.protocol, shards.split, &mut self.sessions, &comm, &inputs, &shards.grid, None, &mut timings)
            .map_err(|f| f.of_rank(self.rank, self.plan))?;
        Ok(timings)
    }
}

/// The collective of a [`RankProbe`]: this rank's own chunk moves as in a real exchange; every
/// chunk from a peer is zeros.
struct ZeroPeers {
    rank: usize,
    world: usize,
}

impl ZeroPeers {
    fn host<'b>(
        &self,
        op: &'static str,
        send: Buffer<'b>,
        recv: BufferMut<'b>,
    ) -> std::result::Result<(&'b [u8], &'b mut [u8]), CollectiveError> {
        match (send, recv) {
            (Buffer::Host(s), BufferMut::Host(r)) => Ok((s, r)),
            _ => Err(CollectiveError::Unsupported {
                op,
                rank: self.rank,
                why: "the rank probe moves host memory only".into(),
            }),
        }
    }
}

impl Collective for ZeroPeers {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_to_all(&self, send: Buffer<'_>, recv: BufferMut<'_>) -> std::result::Result<(), CollectiveError> {
        let (send, recv) = self.host("all_to_all", send, recv)?;
        if send.len() != recv.len() || send.len() % self.world != 0 {
            return Err(CollectiveError::Shape {
                op: "all_to_all",
                rank: self.rank,
                why: format!("send {} and recv {} bytes over {} ranks", send.len(), recv.len(), self.world),
            });
        }
        let chunk = send.len() / self.world;
        let own = self.rank * chunk..(self.rank + 1) * chunk;
        recv.fill(0);
        recv[own.clone()].copy_from_slice(&send[own]);
        Ok(())
    }

    fn all_gather(&self, send: Buffer<'_>, recv: BufferMut<'_>) -> std::result::Result<(), CollectiveError> {
        let (send, recv) = self.host("all_gather", send, recv)?;
        if recv.len() != send.len() * self.world {
            return Err(CollectiveError::Shape {
                op: "all_gather",
                rank: self.rank,
                why: format!("recv {} bytes for {} ranks of {} bytes", recv.len(), self.world, send.len()),
            });
        }
        recv.fill(0);
        recv[self.rank * send.len()..(self.rank + 1) * send.len()].copy_from_slice(send);
        Ok(())
    }

    fn abort(&self, _why: &str) {}
}

/// One rank's forward pass; `Some` of the gathered `[P, b, c, t_local, h, w]` on sequence rank 0.
/// Every value stays in the rank's engine memory (ONNX Runtime IoBinding: host memory on ort-cpu,
/// the device on CUDA) and the collective reads and writes it in place; only the inputs start on the
/// host and only the gathered sample comes back.
#[allow(clippy::too_many_arguments)]
fn run_rank(
    protocol: &DitSegments,
    split: FrameSplit,
    sessions: &mut BTreeMap<String, GraphSession>,
    comm: &dyn Collective,
    inputs: &RankInputs,
    grid: &Tensor,
    fault: Option<&str>,
    timings: &mut RankTimings,
) -> std::result::Result<Option<ArrayD<f32>>, Failure> {
    let mut rank = RankRun { sessions, timings, fault };
    let hidden = Resident::host(inputs.hidden.clone());
    let grid = Resident::host(grid.clone());
    let degree = Resident::host(Tensor::I64(ArrayD::from_elem(IxDyn(&[1]), split.degree as i64)));

    let pre = &protocol.pre;
    let mut out = rank.run(
        pre,
        "pre",
        &[
            (io::HIDDEN_STATES, &hidden),
            (io::TIMESTEP, &Resident::host(inputs.timestep.clone())),
            (io::ENCODER_HIDDEN_STATES, &Resident::host(inputs.states.clone())),
            (io::ENCODER_ATTENTION_MASK, &Resident::host(inputs.mask.clone())),
        ],
    )?;
    let mut tokens = take(&mut out, pre, io::TOKENS).map_err(at(pre))?;
    let t6 = take(&mut out, pre, io::T6).map_err(at(pre))?;
    let embedded = take(&mut out, pre, io::EMBEDDED_TIMESTEP).map_err(at(pre))?;
    let caption = take(&mut out, pre, io::CAPTION).map_err(at(pre))?;
    let text_bias = take(&mut out, pre, io::TEXT_BIAS).map_err(at(pre))?;

    for layer in &protocol.layers {
        let mut out = rank.run(&layer.qkv, "qkv", &[(io::TOKENS, &tokens), (io::T6, &t6)])?;
        let q = take(&mut out, &layer.qkv, io::Q).map_err(at(&layer.qkv))?;
        let k = take(&mut out, &layer.qkv, io::K).map_err(at(&layer.qkv))?;
        let v = take(&mut out, &layer.qkv, io::V).map_err(at(&layer.qkv))?;
        let core = layer.core(split.degree).ok_or_else(|| Failure {
            segment: layer.qkv.clone(),
            error: invalid("--sp", format!("the bundle has no attention core for degree {}", split.degree)),
        })?;
        let core_kind = format!("core_{}", layer.attention);
        let attn = if split.degree == 1 {
            let mut out = rank.run(core, &core_kind, &[(io::Q, &q), (io::K, &k), (io::V, &v), (io::GRID, &grid)])?;
            take(&mut out, core, io::ATTN).map_err(at(core))?
        } else {
            let pack = &protocol.pack_qkv;
            let mut out = rank.run(pack, "pack", &[(io::Q, &q), (io::K, &k), (io::V, &v), (io::SP_DEGREE, &degree)])?;
            let qkv = take(&mut out, pack, io::QKV).map_err(at(pack))?;
            let recv = rank.all_to_all(comm, core, qkv)?;
            let mut out = rank.run(core, &core_kind, &[(io::QKV, &recv), (io::GRID, &grid)])?;
            let attn = take(&mut out, core, io::ATTN).map_err(at(core))?;
            let unpack = &protocol.unpack_attn;
            let back = rank.all_to_all(comm, unpack, attn)?;
            let mut out = rank.run(unpack, "unpack", &[(io::ATTN, &back)])?;
            take(&mut out, unpack, io::ATTN_ROWS).map_err(at(unpack))?
        };
        let mut out = rank.run(
            &layer.post,
            "post",
            &[
                (io::TOKENS, &tokens),
                (io::ATTN, &attn),
                (io::T6, &t6),
                (io::CAPTION, &caption),
                (io::TEXT_BIAS, &text_bias),
            ],
        )?;
        tokens = take(&mut out, &layer.post, io::OUT).map_err(at(&layer.post))?;
    }

    let fin = &protocol.final_graph;
    let mut out = rank.run(
        fin,
        "final",
        &[(io::TOKENS, &tokens), (io::EMBEDDED_TIMESTEP, &embedded), (io::HIDDEN_STATES, &hidden)],
    )?;
    let sample = take(&mut out, fin, io::SAMPLE).map_err(at(fin))?;
    let mut shape = vec![split.degree];
    shape.extend_from_slice(sample.shape());
    let mut all = rank.sessions[fin.as_str()].resident_buffer(sample.dtype(), &shape).map_err(at(fin))?;
    rank.exchange("all_gather", &mut || Ok(comm.all_gather(sample.buffer()?, all.buffer_mut()?)?))?;
    if comm.rank() != 0 {
        return Ok(None);
    }
    let all = all.to_host(io::SAMPLE).map_err(at(fin))?;
    Ok(Some(f32_of(&all, io::SAMPLE).map_err(at(fin))?.clone()))
}

/// One rank's sessions, timings and test fault while it runs.
struct RankRun<'a> {
    sessions: &'a mut BTreeMap<String, GraphSession>,
    timings: &'a mut RankTimings,
    fault: Option<&'a str>,
}

impl RankRun<'_> {
    fn run(
        &mut self,
        graph: &str,
        kind: &str,
        args: &[(&str, &Resident)],
    ) -> std::result::Result<BTreeMap<String, Resident>, Failure> {
        if self.fault == Some(graph) {
            return Err(Failure { segment: graph.to_string(), error: invalid(graph, "injected fault".into()) });
        }
        let started = Instant::now();
        let session = self.sessions.get_mut(graph).expect("every protocol graph is loaded");
        let out = session.run_resident(args).map_err(at(graph))?;
        *self.timings.compute.entry(kind.to_string()).or_default() += started.elapsed().as_secs_f64();
        Ok(out)
    }

    /// A receive buffer shaped like `like` in the memory of `graph`'s session (the next reader).
    fn buffer(&self, graph: &str, like: &Resident) -> std::result::Result<Resident, Failure> {
        self.sessions[graph].resident_buffer(like.dtype(), like.shape()).map_err(at(graph))
    }

    /// `send` through the all-to-all into a buffer of `next`'s session; a group of one keeps it.
    fn all_to_all(
        &mut self,
        comm: &dyn Collective,
        next: &str,
        send: Resident,
    ) -> std::result::Result<Resident, Failure> {
        if comm.world_size() == 1 {
            return Ok(send);
        }
        let mut recv = self.buffer(next, &send)?;
        self.exchange("all_to_all", &mut || Ok(comm.all_to_all(send.buffer()?, recv.buffer_mut()?)?))?;
        Ok(recv)
    }

    fn exchange(&mut self, op: &str, f: &mut dyn FnMut() -> Result<()>) -> std::result::Result<(), Failure> {
        let started = Instant::now();
        let r = f().map_err(|error| Failure { segment: op.to_string(), error });
        *self.timings.exchange.entry(op.to_string()).or_default() += started.elapsed().as_secs_f64();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_collective_keeps_its_own_chunk_and_zeros_the_peers() {
        let comm = ZeroPeers { rank: 1, world: 3 };
        let send: Vec<u8> = (1..=6).collect();
        let mut recv = vec![9u8; 6];
        comm.all_to_all(Buffer::Host(&send), BufferMut::Host(&mut recv)).unwrap();
        assert_eq!(recv, [0, 0, 3, 4, 0, 0]);
        let mut all = vec![9u8; 18];
        comm.all_gather(Buffer::Host(&send), BufferMut::Host(&mut all)).unwrap();
        assert_eq!(all[..6], [0; 6]);
        assert_eq!(all[6..12], send[..]);
        assert_eq!(all[12..], [0; 6]);
        let mut short = vec![0u8; 5];
        assert!(comm.all_to_all(Buffer::Host(&send), BufferMut::Host(&mut short)).is_err());
        assert!(comm.all_gather(Buffer::Host(&send), BufferMut::Host(&mut short)).is_err());
    }
}
