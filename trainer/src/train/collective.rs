//! Data-parallel gradient reduction through Burn's collective operations (`burn::collective`,
//! crate burn-collective): one peer per replica thread, each registered with its replica's device,
//! every parameter's gradient summed onto peer 0 with `reduce(Sum, root = peer 0)`.
//!
//! Upstream trains with torch DDP (accelerate), whose all-reduce leaves identical averaged
//! gradients on every rank, each of which then applies the same update. Here one master model is
//! updated and the replicas are re-forked from it at every step, so only one copy of the reduced
//! gradients is needed: a reduce onto the master's peer gives that copy without the broadcast an
//! all-reduce adds. The trainer scales the sum by `1 / shards`, which is DDP's mean.
//!
//! Burn keeps one collective server per backend type for the whole process, shared by every
//! caller: a session (reset, register `n` peers, one reduce per parameter, finish) therefore runs
//! under a process-wide lock per inner backend type, so that several trainers in one process (tests
//! run in parallel threads) never mix their peers. Each server parks one worker thread of Burn's
//! collective runtime (one worker per CPU core), so a process can use at most that many distinct
//! backend types for data parallelism.
//!
//! Parameters are reduced in module order, identical on every replica (each is a `fork` of the
//! same model). A parameter with a gradient on some replicas only (unused by the others' shards)
//! takes zeros from the others, like DDP's `find_unused_parameters`; one with no gradient anywhere
//! stays without one. The sum order is root first, then the others by device id: with replicas on
//! distinct devices (CUDA) or two replicas it is fixed; with three or more replicas sharing one
//! device (CPU) Burn leaves the order of equal devices unspecified, so the last bits may vary
//! between runs.
//!
//! Burn's other mechanism, the `distributed` feature (in-graph all-reduce on CubeCL backends through
//! NCCL), is not used: with it `Autodiff<B>` is an `AutodiffBackend` only for a
//! `B: DistributedBackend`, which the ndarray backend is not, so every CPU path would stop building.

use std::any::TypeId;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use burn::collective::{self, CollectiveConfig, CollectiveError, PeerId, ReduceOperation};
use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorPrimitive};

use crate::error::{Error, Result};

/// One replica's contribution: its model copy, device and gradients.
pub(super) struct Contribution<B: AutodiffBackend, M> {
    pub replica: M,
    pub device: B::Device,
    pub grads: GradientsParams,
}

/// Sums the gradients of `contributions` (peer `i` is `contributions[i]`) with Burn's collective
/// `reduce` onto peer 0's device and returns that sum. Blocks while another session of the same
/// inner backend type runs in this process.
pub(super) fn reduce_sum<B, M>(contributions: Vec<Contribution<B, M>>) -> Result<GradientsParams>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    let peers = contributions.len();
    if peers == 0 {
        return Err(Error::input("replicas", "a data-parallel reduction needs at least one replica"));
    }
    let peers_u32 = u32::try_from(peers)
        .map_err(|_| Error::input("replicas", format!("at most {} replicas are supported, got {peers}", u32::MAX)))?;
    let present: BTreeSet<ParamId> =
        contributions.iter().flat_map(|c| param_ids::<B, M>(&c.replica, &c.grads)).collect();

    let lock = session_lock::<B::InnerBackend>();
    // A poisoned lock only means an earlier session panicked; the reset below clears its state.
    let _session = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // Forgets peers and pending operations a failed earlier session may have left behind.
    collective::reset_collective::<B::InnerBackend>();
    let config = CollectiveConfig::default().with_num_devices(peers);
    let results: Vec<Result<Option<GradientsParams>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = contributions
            .into_iter()
            .zip(0u32..peers_u32)
            .map(|(c, peer)| {
                let (present, config) = (&present, config.clone());
                scope.spawn(move || run_peer::<B, M>(PeerId::from(peer), c, present, config))
            })
            .collect();
        handles
            .into_iter()
            .zip(0u32..)
            .map(|(h, peer)| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::Collective {
                        peer,
                        operation: "reduce".into(),
                        param: None,
                        why: "peer thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut root = None;
    for result in results {
        if let Some(g) = result? {
            root = Some(g);
        }
    }
    root.ok_or_else(|| Error::Collective {
        peer: 0,
        operation: "reduce".into(),
        param: None,
        why: "the root peer received no result".into(),
    })
}

/// One peer's session: register, reduce every parameter in module order, finish. Returns the sum
/// on the root peer (0) and `None` on the others.
fn run_peer<B, M>(
    peer: PeerId,
    contribution: Contribution<B, M>,
    present: &BTreeSet<ParamId>,
    config: CollectiveConfig,
) -> Result<Option<GradientsParams>>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    let Contribution { replica, device, grads } = contribution;
    let error = |operation: &str, param: Option<String>, e: CollectiveError| Error::Collective {
        peer: peer.0,
        operation: operation.into(),
        param,
        why: format!("{e:?}"),
    };
    collective::register::<B::InnerBackend>(peer, device, config).map_err(|e| error("register", None, e))?;
    let mut visitor = ReducePeer {
        peer,
        root: PeerId::from(0),
        present,
        grads,
        out: GradientsParams::new(),
        path: Vec::new(),
        failed: None,
    };
    replica.visit(&mut visitor);
    // Every peer stops at the same parameter when a reduce fails (Burn fails the operation for all
    // of its callers), so the finish below is reached by all peers either way.
    let finished = collective::finish_collective::<B::InnerBackend>(peer).map_err(|e| error("finish", None, e));
    if let Some((param, e)) = visitor.failed {
        return Err(error("reduce", Some(param), e));
    }
    finished?;
    Ok((peer == visitor.root).then_some(visitor.out))
}

/// Reduces each present parameter's gradient (zeros where this replica has none) onto the root.
struct ReducePeer<'a> {
    peer: PeerId,
    root: PeerId,
    present: &'a BTreeSet<ParamId>,
    grads: GradientsParams,
    out: GradientsParams,
    path: Vec<String>,
    failed: Option<(String, CollectiveError)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ReducePeer<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.failed.is_some() || !self.present.contains(&param.id) {
            return;
        }
        let grad = match self.grads.remove::<B::InnerBackend, D>(param.id) {
            Some(g) => g,
            None => param.val().inner().zeros_like(),
        };
        match collective::reduce::<B::InnerBackend>(
            self.peer,
            grad.into_primitive().tensor(),
            ReduceOperation::Sum,
            self.root,
        ) {
            Ok(Some(sum)) => {
                self.out.register(param.id, Tensor::<B::InnerBackend, D>::from_primitive(TensorPrimitive::Float(sum)))
            }
            Ok(None) => {}
            Err(e) => self.failed = Some((self.path.join("."), e)),
        }
    }
}

/// The ids of `module`'s float parameters that have a gradient in `grads`.
fn param_ids<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M, grads: &GradientsParams) -> Vec<ParamId> {
    struct Ids<'a> {
        grads: &'a GradientsParams,
        ids: Vec<ParamId>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Ids<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.grads.get::<B::InnerBackend, D>(param.id).is_some() {
                self.ids.push(param.id);
            }
        }
    }
    let mut v = Ids { grads, ids: Vec::new() };
    module.visit(&mut v);
    v.ids
}

/// The process-wide lock of Burn's collective server for backend `IB`.
fn session_lock<IB: Backend>() -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<TypeId, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS.get_or_init(Default::default).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    locks.entry(TypeId::of::<IB>()).or_default().clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::module::Module;
    use burn::tensor::TensorData;

    type Inner = NdArray<f32>;
    type A = Autodiff<Inner>;

    #[derive(Module, Debug)]
    struct Two<B: Backend> {
        a: Param<Tensor<B, 1>>,
        b: Param<Tensor<B, 2>>,
        unused: Param<Tensor<B, 1>>,
    }

    fn model(ids: [u64; 3], b_shape: [usize; 2]) -> Two<A> {
        let device = Default::default();
        let n = b_shape[0] * b_shape[1];
        Two {
            a: Param::initialized(
                ParamId::from(ids[0]),
                Tensor::from_data(TensorData::new(vec![1.0f32, 2.0], [2]), &device).require_grad(),
            ),
            b: Param::initialized(
                ParamId::from(ids[1]),
                Tensor::from_data(TensorData::new(vec![1.0f32; n], b_shape), &device).require_grad(),
            ),
            unused: Param::initialized(
                ParamId::from(ids[2]),
                Tensor::from_data(TensorData::new(vec![5.0f32], [1]), &device).require_grad(),
            ),
        }
    }

    /// `loss = k (a0 + 2 a1)` plus `k sum(b)` when `with_b`: gradients `k (1, 2)` and `k` everywhere.
    fn contribution(m: Two<A>, k: f32, with_b: bool) -> Contribution<A, Two<A>> {
        let device = Default::default();
        let coef = Tensor::<A, 1>::from_data(TensorData::new(vec![k, 2.0 * k], [2]), &device);
        let mut loss = (m.a.val() * coef).sum();
        if with_b {
            loss = loss + m.b.val().sum().mul_scalar(k);
        }
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        Contribution { replica: m, device, grads }
    }

    fn values<const D: usize>(g: &GradientsParams, id: ParamId) -> Option<Vec<f32>> {
        g.get::<Inner, D>(id).map(|t| t.into_data().to_vec::<f32>().expect("f32"))
    }

    #[test]
    fn sums_every_replica_onto_the_root_with_zeros_for_unused_parameters() {
        let ids = [11, 12, 13];
        // Replica 1 does not use `b`: its share is zeros; nobody uses `unused`: it stays absent.
        let parts = vec![
            contribution(model(ids, [2, 2]), 1.0, true),
            contribution(model(ids, [2, 2]), 10.0, false),
            contribution(model(ids, [2, 2]), 100.0, true),
        ];
        let sum = reduce_sum(parts).expect("reduce");
        assert_eq!(values::<1>(&sum, ParamId::from(11)), Some(vec![111.0, 222.0]));
        assert_eq!(values::<2>(&sum, ParamId::from(12)), Some(vec![101.0; 4]));
        assert_eq!(values::<1>(&sum, ParamId::from(13)), None);
    }

    #[test]
    fn concurrent_and_repeated_sessions_do_not_mix_their_peers() {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4u64)
                .map(|t| {
                    scope.spawn(move || {
                        let ids = [100 + 3 * t, 101 + 3 * t, 102 + 3 * t];
                        for step in 0..10 {
                            let k = (t * 10 + step) as f32;
                            let peers = 2 + (step as usize % 2);
                            let parts = (0..peers).map(|_| contribution(model(ids, [1, 3]), k, true)).collect();
                            let sum = reduce_sum(parts).expect("reduce");
                            let a = values::<1>(&sum, ParamId::from(ids[0])).expect("gradient of a");
                            assert_eq!(a, vec![peers as f32 * k, 2.0 * peers as f32 * k], "thread {t} step {step}");
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().expect("no session failed");
            }
        });
    }

    #[test]
    fn a_failed_reduce_names_the_peer_and_parameter_and_the_next_session_works() {
        let ids = [21, 22, 23];
        // Same parameter ids, different shapes of `b`: Burn refuses to reduce mismatched shapes.
        let parts = vec![contribution(model(ids, [2, 2]), 1.0, true), contribution(model(ids, [1, 3]), 1.0, true)];
        let err = reduce_sum(parts).expect_err("mismatched shapes cannot be reduced");
        let Error::Collective { operation, param, .. } = &err else { panic!("unexpected error {err}") };
        assert_eq!((operation.as_str(), param.as_deref()), ("reduce", Some("b")), "{err}");
        assert!(err.to_string().contains("parameter `b`"), "{err}");

        let parts = vec![contribution(model(ids, [2, 2]), 1.0, true), contribution(model(ids, [2, 2]), 2.0, true)];
        let sum = reduce_sum(parts).expect("the next session is clean");
        assert_eq!(values::<2>(&sum, ParamId::from(22)), Some(vec![3.0; 4]));
    }
}
