//! Upstream's aesthetic-score caption notices (`add_aesthetic_notice_video` /
//! `add_aesthetic_notice_image` in `opensora/dataset/transform.py` at 9fa322fb): a caption whose
//! item scores `<= 4.25` or `>= 5.75` (`aesthetic` or `aes`) gets one of ten notices, before or
//! after it, drawn uniformly on every load, before `clean_caption`.
//!
//! With a text-embedding cache the variants are encoded ahead of time: `osp-train embed
//! --aesthetic_notices` writes all [`VARIANTS`] of such a caption next to the plain one
//! ([`variant_file`]), and the DiT batcher draws one per load, as upstream draws the text.

use std::path::PathBuf;

use super::annotation::text_embed_file;

/// Notices per list times the two positions.
pub const VARIANTS: usize = 20;

const HIGH_VIDEO: [&str; 10] = [
    "This video has a high aesthetic quality.",
    "The beauty of this video is exceptional.",
    "This video scores high in aesthetic value.",
    "With its harmonious colors and balanced composition.",
    "This video ranks highly for aesthetic quality",
    "The artistic quality of this video is excellent.",
    "This video is rated high for beauty.",
    "The aesthetic quality of this video is impressive.",
    "This video has a top aesthetic score.",
    "The visual appeal of this video is outstanding.",
];

const LOW_VIDEO: [&str; 10] = [
    "This video has a low aesthetic quality.",
    "The beauty of this video is minimal.",
    "This video scores low in aesthetic appeal.",
    "The aesthetic quality of this video is below average.",
    "This video ranks low for beauty.",
    "The artistic quality of this video is lacking.",
    "This video has a low score for aesthetic value.",
    "The visual appeal of this video is low.",
    "This video is rated low for beauty.",
    "The aesthetic quality of this video is poor.",
];

const HIGH_IMAGE: [&str; 10] = [
    "This image has a high aesthetic quality.",
    "The beauty of this image is exceptional",
    "This photo scores high in aesthetic value.",
    "With its harmonious colors and balanced composition.",
    "This image ranks highly for aesthetic quality.",
    "The artistic quality of this photo is excellent.",
    "This image is rated high for beauty.",
    "The aesthetic quality of this image is impressive.",
    "This photo has a top aesthetic score.",
    "The visual appeal of this image is outstanding.",
];

const LOW_IMAGE: [&str; 10] = [
    "This image has a low aesthetic quality.",
    "The beauty of this image is minimal.",
    "This image scores low in aesthetic appeal.",
    "The aesthetic quality of this image is below average.",
    "This image ranks low for beauty.",
    "The artistic quality of this image is lacking.",
    "This image has a low score for aesthetic value.",
    "The visual appeal of this image is low.",
    "This image is rated low for beauty.",
    "The aesthetic quality of this image is poor.",
];

/// The notice list for an item, or `None` when its score gets no notice.
fn notices(aesthetic: Option<f64>, image: bool) -> Option<&'static [&'static str; 10]> {
    let score = aesthetic?;
    match (score <= 4.25, score >= 5.75, image) {
        (true, _, false) => Some(&LOW_VIDEO),
        (true, _, true) => Some(&LOW_IMAGE),
        (_, true, false) => Some(&HIGH_VIDEO),
        (_, true, true) => Some(&HIGH_IMAGE),
        _ => None,
    }
}

/// Whether an item with this score gets notices.
pub fn has_notices(aesthetic: Option<f64>) -> bool {
    notices(aesthetic, false).is_some()
}

/// Variant `k` (`0..VARIANTS`: notice `k / 2`, after the caption when `k` is even, before it when
/// odd) of `caption`, or `None` when the score gets no notice.
pub fn with_notice(caption: &str, aesthetic: Option<f64>, image: bool, k: usize) -> Option<String> {
    let notice = notices(aesthetic, image)?.get(k / 2)?;
    Some(if k.is_multiple_of(2) { format!("{caption} {notice}") } else { format!("{notice} {caption}") })
}

/// The cache file of variant `k` of caption `index` of `path`: `<stem>-<index>-aes<k>.npz`.
pub fn variant_file(path: &str, index: usize, k: usize) -> PathBuf {
    let plain = text_embed_file(path, index);
    let name = plain.to_string_lossy();
    PathBuf::from(format!("{}-aes{k}.npz", name.strip_suffix(".npz").unwrap_or(&name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_follow_the_score_and_the_media_kind() {
        assert_eq!(with_notice("a cat", Some(5.0), false, 0), None);
        assert_eq!(with_notice("a cat", None, false, 0), None);
        assert_eq!(
            with_notice("a cat", Some(4.25), false, 0).as_deref(),
            Some("a cat This video has a low aesthetic quality.")
        );
        assert_eq!(
            with_notice("a cat", Some(5.75), true, 3).as_deref(),
            Some("The beauty of this image is exceptional a cat")
        );
        assert_eq!(with_notice("a cat", Some(9.0), false, VARIANTS), None);
        assert!(has_notices(Some(1.0)) && !has_notices(Some(5.0)));
        assert_eq!(variant_file("v/x.mp4", 1, 7), PathBuf::from("v/x-1-aes7.npz"));
    }
}
