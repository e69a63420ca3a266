//! `osp-runtime`: the lean executor of exported osp bundles.
//!
//! A bundle (see `osp_graphs`) is opened with [`Bundle::open`]; each graph is loaded as a
//! [`GraphSession`] on a [`Backend`] (ONNX Runtime on CPU, CUDA or TensorRT, or tract) and run on
//! named host [`Tensor`]s, which are checked against the manifest before and after the run.
//! This crate never links the training stack or the ONNX-building code.
//!
//! ```no_run
//! # fn main() -> osp_runtime::Result<()> {
//! use osp_runtime::{Bundle, SessionOptions, Tensor};
//! let bundle = Bundle::open("bundles/block")?;
//! let mut session = bundle.session("block", &SessionOptions::default())?;
//! let x = Tensor::zeros(osp_graphs::DType::F32, &[1, 16, 64])?;
//! let outputs = session.run(&[("hidden_states", &x)])?;
//! # Ok(())
//! # }
//! ```

pub mod cli;
pub mod engine;
pub mod error;
pub mod finite;
pub mod integrity;
pub mod io;
pub mod mem;
pub mod metrics;
pub mod parallel;
pub mod pipeline;
pub mod refiner;
pub mod scheduler;
pub mod session;
pub mod tensor;
pub mod text;
pub mod tokenizer;
pub mod vae;
pub mod video;

pub use error::{Error, Result};
pub use io::{read_safetensors, write_safetensors};
pub use session::{Backend, BackendKind, Bundle, GraphSession, SessionOptions};
pub use tensor::Tensor;
