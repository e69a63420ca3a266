//! The in-process [`Collective`]: ranks are threads of one process exchanging host memory.
//!
//! [`HostWorld::groups`] makes a world of `groups * group_size` ranks split into communicators of
//! `group_size` consecutive ranks (the CFG groups of a CFG x SP run). The groups share one abort
//! state: [`Collective::abort`] on any handle fails every pending and later operation of every
//! group, and wakes every waiter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::collective::{Buffer, BufferMut, Collective, CollectiveError};

/// Why the world was aborted: the aborting rank (world numbering) and its reason.
type AbortState = Mutex<Option<(usize, String)>>;

struct World {
    abort: AbortState,
    groups: Mutex<Vec<Arc<Group>>>,
}

#[derive(Default)]
struct Slots {
    /// The operation being assembled; a rank waits for its own sequence number to come up.
    generation: u64,
    sent: Vec<Option<Vec<u8>>>,
    arrived: usize,
    departed: usize,
}

struct Group {
    size: usize,
    slots: Mutex<Slots>,
    wake: Condvar,
}

/// Builds the host communicators.
pub struct HostWorld;

impl HostWorld {
    /// One communicator of `size` ranks.
    pub fn new(size: usize) -> Vec<HostCollective> {
        Self::groups(1, size)
    }

    /// `groups` communicators of `group_size` ranks each, sharing one abort state; handle `k` of
    /// the result is world rank `k`, rank `k % group_size` of group `k / group_size`.
    pub fn groups(groups: usize, group_size: usize) -> Vec<HostCollective> {
        let world = Arc::new(World { abort: Mutex::new(None), groups: Mutex::new(Vec::new()) });
        let mut handles = Vec::with_capacity(groups * group_size);
        for _ in 0..groups {
            let group = Arc::new(Group {
                size: group_size,
                slots: Mutex::new(Slots { sent: vec![None; group_size], ..Default::default() }),
                wake: Condvar::new(),
            });
            lock(&world.groups).push(group.clone());
            for rank in 0..group_size {
                handles.push(HostCollective {
                    world: world.clone(),
                    group: group.clone(),
                    rank,
                    world_rank: handles.len(),
                    seq: AtomicU64::new(0),
                });
            }
        }
        handles
    }
}

/// One rank's handle (see the module docs).
pub struct HostCollective {
    world: Arc<World>,
    group: Arc<Group>,
    rank: usize,
    world_rank: usize,
    /// How many operations this rank has entered.
    seq: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // a panicking rank thread must not wedge the others: the data stays consistent per operation
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HostCollective {
    /// This handle's rank in the whole world (all groups).
    pub fn world_rank(&self) -> usize {
        self.world_rank
    }

    fn aborted(&self) -> Option<CollectiveError> {
        lock(&self.world.abort).as_ref().map(|(rank, why)| CollectiveError::Aborted { rank: *rank, why: why.clone() })
    }

    /// Deposits `send`, waits for every rank of the group, then lets `read` copy out of all the
    /// deposits (indexed by rank) while they are held.
    fn exchange(
        &self,
        op: &'static str,
        send: &[u8],
        read: impl FnOnce(&[Option<Vec<u8>>]) -> Result<(), CollectiveError>,
    ) -> Result<(), CollectiveError> {
        let g = &self.group;
        let my = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut s = lock(&g.slots);
        loop {
            if let Some(e) = self.aborted() {
                return Err(e);
            }
            if s.generation == my {
                break;
            }
            s = g.wake.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.sent[self.rank] = Some(send.to_vec());
        s.arrived += 1;
        g.wake.notify_all();
        while s.arrived < g.size {
            if let Some(e) = self.aborted() {
                return Err(e);
            }
            s = g.wake.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        let lens: Vec<usize> = s.sent.iter().map(|b| b.as_ref().map_or(0, Vec::len)).collect();
        let result = if lens.iter().any(|&l| l != lens[0]) {
            Err(CollectiveError::Shape {
                op,
                rank: self.rank,
                why: format!("ranks sent different byte lengths {lens:?}"),
            })
        } else {
            read(&s.sent)
        };
        s.departed += 1;
        if s.departed == g.size {
            s.sent.iter_mut().for_each(|b| *b = None);
            s.arrived = 0;
            s.departed = 0;
            s.generation += 1;
            g.wake.notify_all();
        }
        result
    }

    fn host<'a>(&self, op: &'static str, b: Buffer<'a>) -> Result<&'a [u8], CollectiveError> {
        match b {
            Buffer::Host(b) => Ok(b),
            Buffer::Cuda { .. } => Err(self.unsupported(op)),
        }
    }

    fn host_mut<'a>(&self, op: &'static str, b: BufferMut<'a>) -> Result<&'a mut [u8], CollectiveError> {
        match b {
            BufferMut::Host(b) => Ok(b),
            BufferMut::Cuda { .. } => Err(self.unsupported(op)),
        }
    }

    fn unsupported(&self, op: &'static str) -> CollectiveError {
        CollectiveError::Unsupported {
            op,
            rank: self.rank,
            why: "the host collective moves host memory only (CUDA buffers need the NCCL collective)".into(),
        }
    }
}

impl Collective for HostCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.group.size
    }

    fn all_to_all(&self, send: Buffer<'_>, recv: BufferMut<'_>) -> Result<(), CollectiveError> {
        const OP: &str = "all_to_all";
        let (send, recv) = (self.host(OP, send)?, self.host_mut(OP, recv)?);
        let n = self.group.size;
        if send.len() != recv.len() || send.len() % n != 0 {
            return Err(CollectiveError::Shape {
                op: OP,
                rank: self.rank,
                why: format!("send ({}) and recv ({}) must be equal multiples of {n} bytes", send.len(), recv.len()),
            });
        }
        let chunk = send.len() / n;
        let me = self.rank;
        self.exchange(OP, send, |all| {
            for (i, from) in all.iter().enumerate() {
                let from = from.as_deref().unwrap_or_default();
                recv[i * chunk..(i + 1) * chunk].copy_from_slice(&from[me * chunk..(me + 1) * chunk]);
            }
            Ok(())
        })
    }

    fn all_gather(&self, send: Buffer<'_>, recv: BufferMut<'_>) -> Result<(), CollectiveError> {
        const OP: &str = "all_gather";
        let (send, recv) = (self.host(OP, send)?, self.host_mut(OP, recv)?);
        let n = self.group.size;
        if recv.len() != send.len() * n {
            return Err(CollectiveError::Shape {
                op: OP,
                rank: self.rank,
                why: format!("recv is {} bytes, must be {n} x send ({})", recv.len(), send.len()),
            });
        }
        let chunk = send.len();
        self.exchange(OP, send, |all| {
            for (i, from) in all.iter().enumerate() {
                recv[i * chunk..(i + 1) * chunk].copy_from_slice(from.as_deref().unwrap_or_default());
            }
            Ok(())
        })
    }

    fn abort(&self, why: &str) {
        {
            let mut a = lock(&self.world.abort);
            if a.is_none() {
                *a = Some((self.world_rank, why.to_string()));
            }
        }
        for g in lock(&self.world.groups).iter() {
            let _held = lock(&g.slots);
            g.wake.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn run<T: Send>(handles: Vec<HostCollective>, f: impl Fn(&HostCollective) -> T + Sync) -> Vec<T> {
        std::thread::scope(|s| {
            let joins: Vec<_> = handles.iter().map(|h| s.spawn(|| f(h))).collect();
            joins.into_iter().map(|j| j.join().unwrap()).collect()
        })
    }

    #[test]
    fn all_to_all_and_all_gather_move_chunks() {
        for n in [1, 2, 3, 4] {
            let out = run(HostWorld::new(n), |c| {
                let r = c.rank() as u8;
                let mut res = vec![];
                for round in 0..3u8 {
                    // chunk j of rank r: [r, j, round, round]
                    let send: Vec<u8> = (0..n as u8).flat_map(|j| [r, j, round, round]).collect();
                    let mut recv = vec![0; send.len()];
                    c.all_to_all(Buffer::Host(&send), BufferMut::Host(&mut recv)).unwrap();
                    let expect: Vec<u8> = (0..n as u8).flat_map(|i| [i, r, round, round]).collect();
                    assert_eq!(recv, expect);
                    let mut all = vec![0; 2 * n];
                    c.all_gather(Buffer::Host(&[r, round]), BufferMut::Host(&mut all)).unwrap();
                    res.push(all);
                }
                res
            });
            for per_rank in out {
                for (round, all) in per_rank.into_iter().enumerate() {
                    let expect: Vec<u8> = (0..n as u8).flat_map(|i| [i, round as u8]).collect();
                    assert_eq!(all, expect);
                }
            }
        }
    }

    #[test]
    fn groups_exchange_separately() {
        let out = run(HostWorld::groups(2, 2), |c| {
            let mut all = vec![0; 2];
            c.all_gather(Buffer::Host(&[c.world_rank() as u8]), BufferMut::Host(&mut all)).unwrap();
            all
        });
        assert_eq!(out, vec![vec![0, 1], vec![0, 1], vec![2, 3], vec![2, 3]]);
    }

    #[test]
    fn abort_wakes_every_waiter_in_every_group() {
        let start = Instant::now();
        let out = run(HostWorld::groups(2, 3), |c| {
            if c.world_rank() == 4 {
                std::thread::sleep(Duration::from_millis(50));
                c.abort("segment failed");
                return Ok(());
            }
            let mut all = vec![0; 3];
            c.all_gather(Buffer::Host(&[1]), BufferMut::Host(&mut all))
        });
        assert!(start.elapsed() < Duration::from_secs(5));
        for (k, r) in out.into_iter().enumerate() {
            match (k, r) {
                (4, r) => assert!(r.is_ok()),
                // group 0 completes its gather before the abort or is aborted; group 1 waits on rank 4
                (0..=2, Ok(())) => {}
                (_, Err(CollectiveError::Aborted { rank: 4, why })) => assert_eq!(why, "segment failed"),
                (k, other) => panic!("rank {k}: {other:?}"),
            }
        }
    }

    #[test]
    fn mismatched_sizes_are_refused() {
        let out = run(HostWorld::new(2), |c| {
            let send = vec![0u8; 2 + 2 * c.rank()];
            let mut recv = vec![0u8; send.len()];
            c.all_to_all(Buffer::Host(&send), BufferMut::Host(&mut recv))
        });
        assert!(out.iter().all(|r| matches!(r, Err(CollectiveError::Shape { .. }))), "{out:?}");
    }
}
