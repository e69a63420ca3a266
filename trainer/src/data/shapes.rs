//! A procedural text-to-video data set: one large coloured shape (red, green, blue or yellow
//! circle, square or triangle) moving left, right, up or down over a plain dark background, with
//! captions such as "a red circle moving to the right". Written as H.264 mp4 files, an upstream
//! annotation JSON (with extra `color`, `shape`, `direction` keys, which upstream ignores) and a
//! 2-item `--data` file. Deterministic by seed: item `i` draws from its own stream of the seed.
//!
//! Run: `osp-train shapes --out data/shapes --count 480 --num-frames 17 --height 64 --width 64 --seed 0`

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::annotation::{AnnotationItem, Captions, Resolution};
use super::video::{write_mp4, Frames};
use crate::error::{Error, Result};
use crate::train::checkpoint::write_json;
use crate::train::Rng;

/// Background colour (dark grey: every shape colour stands out and none is confused with it).
pub const BACKGROUND: [u8; 3] = [24, 24, 24];
/// Frames per second written into the files and the annotation (upstream's `--train_fps 16`).
pub const FPS: f64 = 16.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Red,
    Green,
    Blue,
    Yellow,
}

impl Color {
    pub const ALL: [Color; 4] = [Color::Red, Color::Green, Color::Blue, Color::Yellow];

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [220, 30, 30],
            Color::Green => [30, 200, 40],
            Color::Blue => [40, 70, 230],
            Color::Yellow => [235, 215, 30],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }

    /// Whether `(dx, dy)` (pixels from the centre) lies inside the shape of half-size `r`.
    fn contains(self, dx: f32, dy: f32, r: f32) -> bool {
        match self {
            Shape::Circle => dx * dx + dy * dy <= r * r,
            Shape::Square => dx.abs() <= r * 0.9 && dy.abs() <= r * 0.9,
            // Apex up at (0, -r), base from (-r, r) to (r, r).
            Shape::Triangle => dy <= r && dy >= -r && dx.abs() <= (dy + r) / 2.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Left,
    Right,
    Up,
    Down,
}

impl Direction {
    pub const ALL: [Direction; 4] = [Direction::Left, Direction::Right, Direction::Up, Direction::Down];

    /// Unit motion `(dx, dy)` in image coordinates (y grows downwards).
    pub fn vector(self) -> (f32, f32) {
        match self {
            Direction::Left => (-1.0, 0.0),
            Direction::Right => (1.0, 0.0),
            Direction::Up => (0.0, -1.0),
            Direction::Down => (0.0, 1.0),
        }
    }

    pub fn phrase(self) -> &'static str {
        match self {
            Direction::Left => "to the left",
            Direction::Right => "to the right",
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// The caption of a clip: `a <color> <shape> moving <direction phrase>`.
pub fn caption(color: Color, shape: Shape, direction: Direction) -> String {
    format!("a {} {} moving {}", color.name(), shape.name(), direction.phrase())
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapesConfig {
    pub count: usize,
    pub num_frames: usize,
    pub height: usize,
    pub width: usize,
    pub seed: u64,
}

/// One generated clip's description (an annotation item plus the ground truth).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapesItem {
    #[serde(flatten)]
    pub annotation: AnnotationItem,
    pub color: Color,
    pub shape: Shape,
    pub direction: Direction,
}

/// Renders one clip: the shape's half-size is a quarter of the shorter side; it travels 40% of
/// the frame along `direction`, starting where that keeps it inside, with a seeded offset across.
pub fn render(
    color: Color,
    shape: Shape,
    direction: Direction,
    num_frames: usize,
    height: usize,
    width: usize,
    rng: &mut Rng,
) -> Frames {
    let r = height.min(width) as f32 / 4.0;
    let (dx, dy) = direction.vector();
    let travel_x = 0.4 * width as f32;
    let travel_y = 0.4 * height as f32;
    // Centre path: from centre - travel/2 to centre + travel/2 along the motion, jittered.
    let jitter = |span: f32, rng: &mut Rng| (rng.uniform() as f32 - 0.5) * span;
    let cx0 = width as f32 / 2.0 - dx * travel_x / 2.0
        + if dx == 0.0 { jitter(width as f32 - 2.0 * r - 2.0, rng) } else { jitter(0.1 * width as f32, rng) };
    let cy0 = height as f32 / 2.0 - dy * travel_y / 2.0
        + if dy == 0.0 { jitter(height as f32 - 2.0 * r - 2.0, rng) } else { jitter(0.1 * height as f32, rng) };
    let fg = color.rgb();
    let mut data = Vec::with_capacity(num_frames * height * width * 3);
    for f in 0..num_frames {
        let progress = if num_frames > 1 { f as f32 / (num_frames - 1) as f32 } else { 0.0 };
        let cx = cx0 + dx * travel_x * progress;
        let cy = cy0 + dy * travel_y * progress;
        for y in 0..height {
            for x in 0..width {
                let inside = shape.contains(x as f32 + 0.5 - cx, y as f32 + 0.5 - cy, r);
                data.extend_from_slice(if inside { &fg } else { &BACKGROUND });
            }
        }
    }
    Frames { t: num_frames, h: height, w: width, data }
}

/// Writes the data set under `out`: `videos/<index>.mp4`, `annotation.json` and `data.txt`
/// (`<out>,<out>/annotation.json`, absolute). Returns the items.
pub fn generate(out: &Path, config: &ShapesConfig) -> Result<Vec<ShapesItem>> {
    if config.count == 0 || config.num_frames == 0 {
        return Err(Error::input("--count/--num-frames", "must be at least 1"));
    }
    if !config.height.is_multiple_of(2) || !config.width.is_multiple_of(2) || config.height < 16 || config.width < 16 {
        return Err(Error::input(
            "--height/--width",
            format!("must be even and at least 16 (H.264 4:2:0), got {}x{}", config.height, config.width),
        ));
    }
    let videos = out.join("videos");
    std::fs::create_dir_all(&videos).map_err(|e| Error::io(&videos, e))?;
    let out = out.canonicalize().map_err(|e| Error::io(out, e))?;
    let mut combos: Vec<(Color, Shape, Direction)> = Color::ALL
        .iter()
        .flat_map(|&c| Shape::ALL.iter().flat_map(move |&s| Direction::ALL.iter().map(move |&d| (c, s, d))))
        .collect();
    Rng::derive(config.seed, u64::MAX).shuffle(&mut combos);
    let mut items = Vec::with_capacity(config.count);
    for i in 0..config.count {
        let (color, shape, direction) = combos[i % combos.len()];
        let mut rng = Rng::derive(config.seed, i as u64);
        let frames = render(color, shape, direction, config.num_frames, config.height, config.width, &mut rng);
        let rel = format!("videos/{i:05}.mp4");
        write_mp4(&out.join(&rel), &frames, FPS, 12)?;
        items.push(ShapesItem {
            annotation: AnnotationItem {
                path: rel,
                cap: Some(Captions::Many(vec![caption(color, shape, direction)])),
                resolution: Some(Resolution { height: config.height, width: config.width }),
                num_frames: Some(config.num_frames),
                fps: Some(FPS),
                cut: None,
                crop: None,
                aesthetic: None,
            },
            color,
            shape,
            direction,
        });
        tracing::debug!(index = i, "wrote shapes clip");
    }
    let annotation = out.join("annotation.json");
    write_json(&annotation, &items)?;
    let data = out.join("data.txt");
    let line = format!("{},{}\n", out.display(), annotation.display());
    osp_fs::write_bytes(&data, line)?;
    tracing::info!(out = %out.display(), count = items.len(), "shapes data set written");
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn centroid(frames: &Frames, f: usize) -> (f32, f32) {
        let (mut sx, mut sy, mut n) = (0.0, 0.0, 0.0);
        for y in 0..frames.h {
            for x in 0..frames.w {
                let p = &frames.frame(f)[(y * frames.w + x) * 3..][..3];
                if p != BACKGROUND {
                    sx += x as f32;
                    sy += y as f32;
                    n += 1.0;
                }
            }
        }
        (sx / n, sy / n)
    }

    #[test]
    fn shapes_move_the_named_way_and_are_large() {
        for d in Direction::ALL {
            for s in Shape::ALL {
                let f = render(Color::Red, s, d, 9, 64, 64, &mut Rng::new(1));
                let (a, b) = (centroid(&f, 0), centroid(&f, 8));
                let (vx, vy) = d.vector();
                let moved = ((b.0 - a.0) * vx + (b.1 - a.1) * vy) / 64.0;
                assert!(moved > 0.35, "{s:?} {d:?} moved {moved}");
                let area = f.frame(0).chunks(3).filter(|p| *p != BACKGROUND).count();
                assert!(area as f32 > 0.08 * 64.0 * 64.0, "{s:?} covers {area} pixels");
            }
        }
        assert_eq!(caption(Color::Yellow, Shape::Triangle, Direction::Right), "a yellow triangle moving to the right");
        assert_eq!(caption(Color::Blue, Shape::Square, Direction::Up), "a blue square moving up");
    }
}
