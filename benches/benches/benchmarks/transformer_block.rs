//! The proof-model transformer block (`osp_graphs::config::TransformerBlockConfig`) per attention form
//! and backend, at the demo config (hidden 256, 4 heads x 64), 2 threads.

use std::time::Instant;

use criterion::{criterion_group, Criterion, Throughput};
use ndarray::{ArrayD, IxDyn};
use osp_benches::export_block;
use osp_graphs::AttentionKind;
use osp_runtime::session::Backend;
use osp_runtime::{SessionOptions, Tensor};

fn transformer_block(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("temporary directory for bundles should be creatable");
    let (b, n) = (1usize, 256usize);
    for form in [AttentionKind::OnnxAttention, AttentionKind::MsMultiHeadAttention, AttentionKind::Decomposed] {
        let (bundle, cfg) =
            export_block(&tmp.path().join(form.to_string()), form).expect("exporting the bench block should work");
        let x = Tensor::from(ArrayD::<f32>::from_shape_fn(IxDyn(&[b, n, cfg.hidden_size]), |i| {
            ((i[1] * 7 + i[2]) % 13) as f32 / 13.0 - 0.5
        }));
        let m = Tensor::from(ArrayD::<f32>::ones(IxDyn(&[b, n])));
        let mut group = c.benchmark_group(format!("transformer_block_{form}"));
        group.throughput(Throughput::Elements((b * n) as u64));
        // tract lowers com.microsoft MultiHeadAttention only without a bias; that form is ORT's.
        let backends = match form {
            AttentionKind::MsMultiHeadAttention => vec![Backend::OrtCpu],
            _ => vec![Backend::OrtCpu, Backend::Tract],
        };
        for backend in backends {
            let mut s = bundle
                .session("block", &SessionOptions::new(backend.clone()).with_threads(2))
                .expect("session should build");
            let id = format!("f32/b{b}_n{n}_d{}/{}", cfg.hidden_size, backend.name());
            group.bench_function(id, |bench| {
                bench.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        s.run(&[("hidden_states", &x), ("attention_mask", &m)]).expect("bench run should succeed");
                    }
                    start.elapsed()
                })
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = transformer_block
}
