//! The caption tokenizer trained by `osp-train tokenizer` (`osp_trainer::text`) loads in the
//! runtime's tokenizer and gives the same ids and masks as the trainer's (the ids the text cache
//! was made with are the ids `osp generate` feeds the encoder), with T5's special ids.

use osp_runtime::tokenizer::Tokenizer;
use osp_trainer::text::{save_tokenizer, train_caption_tokenizer, CaptionTokenizer};

#[test]
fn trainer_and_runtime_tokenize_captions_alike() {
    let captions: Vec<String> = ["red", "green", "blue", "yellow"]
        .iter()
        .flat_map(|c| {
            ["circle", "square", "triangle"].iter().flat_map(move |s| {
                ["to the left", "to the right", "up", "down"].iter().map(move |d| format!("a {c} {s} moving {d}"))
            })
        })
        .collect();
    let trained = train_caption_tokenizer(&captions, 64).expect("trains");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokenizer.json");
    save_tokenizer(&trained, &path).expect("saves");

    let runtime = Tokenizer::from_file(&path).expect("the runtime loads it");
    let trainer = CaptionTokenizer::from_file(&path).expect("the trainer loads it");
    assert_eq!((runtime.pad_id(), runtime.eos_id()), (Some(0), Some(1)));
    let prompts = [
        "a red circle moving to the right",
        "A Yellow  triangle moving down",
        "a purple hexagon moving sideways",
        "a blue square moving up a blue square moving up a blue square moving up",
    ];
    for prompt in prompts {
        let r = runtime.encode(prompt, 12).expect("runtime encodes");
        let t = trainer.encode(prompt, 12).expect("trainer encodes");
        assert_eq!(r.input_ids, t.input_ids, "ids of {prompt:?}");
        assert_eq!(r.attention_mask, t.attention_mask, "mask of {prompt:?}");
        assert!(!r.input_ids.contains(&2), "{prompt:?} has <unk>: {:?}", r.input_ids);
    }
    // The empty caption (CFG's unconditional text) is `[</s>, <pad>, ...]` on both sides.
    let r = runtime.encode_negative("", 12).expect("runtime encodes the empty caption");
    assert_eq!(r.input_ids, trainer.encode("", 12).expect("trainer encodes").input_ids);
    assert_eq!(r.input_ids[0], 1);
    let r = runtime.encode("a red circle moving to the right", 12).expect("encodes");
    assert_eq!(r.input_ids.iter().filter(|&&i| i > 2).count(), 7, "one piece per known word: {:?}", r.input_ids);
    assert_eq!(r.input_ids[7], 1);
}
