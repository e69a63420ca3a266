//! Training data as upstream reads it: the `--data` file and annotation JSON
//! ([`annotation`]), frame and resolution planning with shape buckets and a restorable,
//! seed-determined order ([`dataset`]), FFmpeg video I/O ([`video`]), and the procedural
//! coloured-shapes data set ([`shapes`]).

pub mod annotation;
pub mod dataset;
pub mod shapes;
pub mod video;

pub mod aesthetic;
pub use annotation::{read_annotation, read_data_file, AnnotationItem, DataSource};
pub use dataset::{DataConfig, DataPosition, Dataset, Sample, VaeClips};
