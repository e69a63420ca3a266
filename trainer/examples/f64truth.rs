// scratch (not committed): the WFVAE decode in f64 on Burn ndarray, for error measurements
use osp_trainer::checkpoint::{Checkpoint, LoadOptions};
use osp_trainer::io::{read_tensors, take_tensor, write_tensors};
use osp_trainer::models::wfvae::WFVAEModelConfig;
type B = burn::backend::NdArray<f64>;
fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let device = Default::default();
    let cfg = WFVAEModelConfig::from_json_file(std::path::Path::new(&a[1]))?;
    let mut model = cfg.init::<B>(&device)?;
    let ck = Checkpoint::open(std::path::Path::new(&a[2]))?;
    model.load_official(&ck, LoadOptions { allow_partial: false })?;
    let inputs = read_tensors(&a[3])?;
    let z = take_tensor::<B, 5>(&inputs, "z", &device)?;
    let t = std::time::Instant::now();
    let y = model.decode(z)?;
    eprintln!("decode {:?} in {:?}", y.dims(), t.elapsed());
    write_tensors(&a[4], &[("sample".to_string(), y.into_data())])?;
    Ok(())
}
