//! Strict loading of the loss networks: the real LPIPS v0.1 linear weights
//! (`../shared/reference/assets/lpips_v0.1_vgg.{safetensors,pth}`) with a torchvision-layout VGG16,
//! and upstream-named `LPIPSWithDiscriminator3D` / `NLayerDiscriminator3D` state dicts.

mod common;

use burn::module::ParamId;
use burn::store::{ModuleSnapshot, TensorSnapshot};
use burn::tensor::TensorData;
use common::{reference_dir, B};
use osp_trainer::checkpoint::{Checkpoint, LoadOptions};
use osp_trainer::losses::LossConfig;
use osp_trainer::models::discriminator::NLayerDiscriminator3DConfig;
use osp_trainer::models::lpips::LPIPSConfig;
use osp_trainer::{remap, Error};

fn lin_file(ext: &str) -> Checkpoint {
    Checkpoint::open(reference_dir().join(format!("assets/lpips_v0.1_vgg.{ext}"))).unwrap()
}

/// Every tensor of `module` under its official name.
fn snapshots<M: ModuleSnapshot<B>>(module: &M) -> Vec<TensorSnapshot> {
    module.collect(None, Some(remap::burn_to_official()), remap::SKIP_ENUM_VARIANTS)
}

/// A torchvision `vgg16` state dict (random values): `features.N.*` plus the `classifier.*` head.
fn torchvision_vgg() -> Checkpoint {
    let donor = LPIPSConfig::default().init::<B>(&Default::default()).unwrap();
    let mut ckpt = Checkpoint::from_snapshots("vgg16.pth", "test", snapshots(&donor.net));
    for (name, shape) in [("classifier.6.weight", vec![1000, 4]), ("classifier.6.bias", vec![1000])] {
        let n = shape.iter().product();
        ckpt.insert(
            name,
            TensorSnapshot::from_data(TensorData::new(vec![0f32; n], shape), vec![], vec![], ParamId::new()),
        );
    }
    ckpt
}

fn values<M: ModuleSnapshot<B>>(module: &M, name: &str) -> Vec<f32> {
    let s = snapshots(module).into_iter().find(|s| s.full_path() == name).unwrap_or_else(|| panic!("no `{name}`"));
    s.to_data().unwrap().to_vec::<f32>().unwrap()
}

#[test]
fn real_lin_weights_load_strictly_from_safetensors_and_pth() {
    let vgg = torchvision_vgg();
    let mut from_st = LPIPSConfig::default().init::<B>(&Default::default()).unwrap();
    let report = from_st.load_pretrained(&vgg, &lin_file("safetensors")).unwrap();
    assert_eq!(report.applied.len(), 26 + 5, "{report}");
    assert_eq!(report.builtin, vec!["scaling_layer.scale".to_string(), "scaling_layer.shift".to_string()]);
    assert!(report.missing.is_empty() && report.unused.is_empty());

    let mut from_pth = LPIPSConfig::default().init::<B>(&Default::default()).unwrap();
    from_pth.load_pretrained(&vgg, &lin_file("pth")).unwrap();
    let st = lin_file("safetensors");
    for k in 0..5 {
        let name = format!("lin{k}.model.1.weight");
        let file = st.get(&name).unwrap().to_data().unwrap().to_vec::<f32>().unwrap();
        assert_eq!(values(&from_st, &name), file, "{name} from safetensors");
        assert_eq!(values(&from_pth, &name), file, "{name} from the legacy .pth");
        // The real v0.1 weights are non-negative (they are trained as a learned positive metric).
        assert!(file.iter().all(|v| *v >= 0.0) && file.iter().any(|v| *v > 0.0), "{name}");
    }
    assert_eq!(
        values(&from_st, "net.features.28.weight"),
        vgg.get("features.28.weight").unwrap().to_data().unwrap().to_vec::<f32>().unwrap()
    );
}

#[test]
fn incomplete_or_foreign_files_are_named() {
    let mut lin = lin_file("safetensors");
    lin.remove("lin4.model.1.weight").unwrap();
    let mut model = LPIPSConfig::default().init::<B>(&Default::default()).unwrap();
    let err = model.load_pretrained(&torchvision_vgg(), &lin).unwrap_err();
    assert!(matches!(&err, Error::MissingTensor { path } if path == "lin4.model.1.weight"), "{err}");

    let mut vgg = torchvision_vgg();
    let extra = TensorSnapshot::from_data(TensorData::new(vec![0f32; 4], [4]), vec![], vec![], ParamId::new());
    vgg.insert("features.40.weight", extra);
    let err = model.load_pretrained(&vgg, &lin_file("safetensors")).unwrap_err();
    assert!(matches!(&err, Error::UnexpectedTensor { path } if path == "net.features.40.weight"), "{err}");

    // A VGG of other widths is a shape error, not a silent partial load.
    let mut tiny = LPIPSConfig { chns: [4, 8, 8, 16, 16] }.init::<B>(&Default::default()).unwrap();
    let err = tiny.load_pretrained(&torchvision_vgg(), &lin_file("safetensors")).unwrap_err();
    assert!(err.to_string().contains("net.features.0.weight"), "{err}");
}

/// Names a module's tensors as an upstream `LPIPSWithDiscriminator3D` state dict does.
fn upstream_name(port: &str) -> String {
    // Port `perceptual_loss.net.features.N` -> upstream `perceptual_loss.net.slice{k}.N`.
    if let Some(rest) = port.strip_prefix("perceptual_loss.net.features.") {
        let index: usize = rest.split('.').next().unwrap().parse().unwrap();
        let slice = match index {
            0..=3 => 1,
            4..=8 => 2,
            9..=15 => 3,
            16..=22 => 4,
            _ => 5,
        };
        return format!("perceptual_loss.net.slice{slice}.{rest}");
    }
    port.to_string()
}

#[test]
fn upstream_dics_model_state_dict_loads_strictly() {
    let device = Default::default();
    let config = LossConfig {
        discriminator: NLayerDiscriminator3DConfig { input_nc: 3, ndf: 4, n_layers: 4 },
        ..LossConfig::default()
    };
    let donor = config.init::<B>(&device).unwrap();
    let scalar = |v: Vec<f32>, shape: Vec<usize>| {
        TensorSnapshot::from_data(TensorData::new(v, shape), vec![], vec![], ParamId::new())
    };
    let mut ckpt = Checkpoint::from_snapshots("ckpt", "state_dict.dics_model", vec![]);
    for s in snapshots(&donor) {
        let name = s.full_path();
        if name == "logvar" {
            continue;
        }
        ckpt.insert(format!("module.{}", upstream_name(&name)), s);
    }
    // Upstream extras: a rank-0 logvar and BatchNorm step counters.
    ckpt.insert("module.logvar", scalar(vec![0.25], vec![]));
    for i in [3, 6, 9, 12] {
        let counter = TensorSnapshot::from_data(
            TensorData::new(vec![17i64], Vec::<usize>::new()),
            vec![],
            vec![],
            ParamId::new(),
        );
        ckpt.insert(format!("module.discriminator.main.{i}.num_batches_tracked"), counter);
    }
    assert!(ckpt.get("module.perceptual_loss.net.slice3.14.weight").is_some());

    let mut model = config.init::<B>(&device).unwrap();
    let report = model.load_official(&ckpt, LoadOptions::default()).unwrap();
    assert!(report.applied.contains(&"logvar".to_string()), "{report}");
    assert_eq!(model.logvar_value(), 0.25);
    assert_eq!(values(&model, "discriminator.main.14.weight"), values(&donor, "discriminator.main.14.weight"));
    assert_eq!(
        values(&model, "discriminator.main.3.running_mean"),
        values(&donor, "discriminator.main.3.running_mean")
    );
    assert_eq!(
        values(&model, "perceptual_loss.net.features.14.weight"),
        values(&donor, "perceptual_loss.net.features.14.weight")
    );

    // Strict: a missing discriminator tensor is named; so is a missing logvar.
    let mut broken = ckpt.map_names(|n| (n != "module.discriminator.main.5.weight").then(|| n.to_string())).unwrap();
    let err = config.init::<B>(&device).unwrap().load_official(&broken, LoadOptions::default()).unwrap_err();
    assert!(matches!(&err, Error::MissingTensor { path } if path == "discriminator.main.5.weight"), "{err}");
    broken = ckpt.map_names(|n| (n != "module.logvar").then(|| n.to_string())).unwrap();
    let err = config.init::<B>(&device).unwrap().load_official(&broken, LoadOptions::default()).unwrap_err();
    assert!(matches!(&err, Error::MissingTensor { path } if path == "logvar"), "{err}");
}

#[test]
fn discriminator_alone_loads_with_counters_dropped() {
    let device = Default::default();
    let config = NLayerDiscriminator3DConfig { input_nc: 3, ndf: 4, n_layers: 3 };
    let donor = config.init::<B>(&device).unwrap();
    let mut ckpt = Checkpoint::from_snapshots("disc.safetensors", "test", snapshots(&donor));
    let counter =
        TensorSnapshot::from_data(TensorData::new(vec![3i64], Vec::<usize>::new()), vec![], vec![], ParamId::new());
    ckpt.insert("main.3.num_batches_tracked", counter);
    let mut model = config.init::<B>(&device).unwrap();
    let report = model.load_official(&ckpt, LoadOptions::default()).unwrap();
    assert_eq!(report.applied.len(), snapshots(&donor).len());
    assert_eq!(values(&model, "main.0.weight"), values(&donor, "main.0.weight"));
}
