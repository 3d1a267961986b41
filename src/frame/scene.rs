//! Has the scene changed since a trigger last looked at it?
//!
//! A settled trigger is not evaluated again while its picture stays the same, so this test
//! decides what a trigger can miss. It must let sensor noise, JPEG artefacts and light that
//! drifts or steps (auto-exposure) pass, and must see a person at the far side of the
//! frame, including one whose coat differs from the wall only in colour.
//!
//! - A region (the frame, or a trigger's zone) becomes a [`Signature`]: the mean colour of
//!   each cell of a 32x24 grid over it (R, G and B apart, so a change of hue at equal
//!   brightness counts).
//! - Two signatures are compared cell by cell after the overall change of light is taken
//!   out (one gain per channel, the median ratio over the cells): what remains in a cell is
//!   a local change. The decision rests on the changed area, the cells whose change clears
//!   the noise, never on the mean over the frame, where a small figure disappears.
//! - The noise comes from the camera itself: [`Noise`] follows the median cell change
//!   between consecutive frames of the region (a moving figure is a minority of the cells,
//!   so the median is the still scene's flicker), and the threshold is a multiple of it.
//!   A noisy night camera gets a higher threshold than a clean one, and both still see a
//!   person-sized change, which moves whole cells by far more than noise does.
//!
//! Pure and allocation-light: a signature of a 1280x720 frame is one pass over its pixels.

use std::collections::VecDeque;

/// Cells across the grid.
pub const COLS: u32 = 32;
/// Cells down the grid.
pub const ROWS: u32 = 24;
/// The smallest cell change (in 0..255 levels of one channel) that ever counts: below
/// it, a change is invisible to the model too.
pub const MIN_DELTA: f32 = 4.0;
/// The largest threshold noise can raise: a region that flickers by more than this is
/// chaos (rain, a panning camera), and a figure must still be seen in it.
pub const MAX_DELTA: f32 = 32.0;
/// Threshold as a multiple of the noise level (the median cell change between frames).
/// For Gaussian noise the median of the largest of three channel changes is about 1.26
/// standard deviations, so 3.6 times it is 4.5 deviations: about 2e-5 of still cells
/// cross it per comparison, 0.016 of a 768-cell grid.
pub const NOISE_FACTOR: f32 = 3.6;
/// Changed cells that make a changed scene: 2 of 768 (0.26% of the region). A person
/// covering 1% of a 1280x720 frame covers about 8 cells.
pub const MIN_CELLS: usize = 2;
/// An overall change of light by more than this fraction (lights on, night mode) counts
/// as a change even when every cell changed alike.
pub const MAX_GAIN_CHANGE: f32 = 0.3;
/// Frames over which the noise level is taken (the median of their medians).
const NOISE_FRAMES: usize = 16;
/// Cells darker than this (in a channel) are left out of the gain estimate: their ratio is
/// mostly noise.
const GAIN_MIN_LEVEL: f32 = 16.0;

/// The mean colour of each cell of a grid over a region of a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    cols: u32,
    rows: u32,
    /// Mean R, G and B of each cell, row by row.
    cells: Vec<[f32; 3]>,
}

/// A pixel rectangle `(x0, y0, x1, y1)`, ends exclusive.
pub type Rect = (u32, u32, u32, u32);

impl Signature {
    /// The signature of `rect` of a packed RGB picture `width` x `height`; `None` when
    /// the rectangle is empty or outside the picture, or the buffer too short.
    pub fn of(rgb: &[u8], width: u32, height: u32, rect: Rect) -> Option<Self> {
        let (x0, y0, x1, y1) = rect;
        if x1 <= x0
            || y1 <= y0
            || x1 > width
            || y1 > height
            || rgb.len() < width as usize * height as usize * 3
        {
            return None;
        }
        let (w, h) = (x1 - x0, y1 - y0);
        let (cols, rows) = (COLS.min(w), ROWS.min(h));
        // Byte offsets of the cells' column edges within a row.
        let edges: Vec<usize> = (0..=cols)
            .map(|c| (x0 + c * w / cols) as usize * 3)
            .collect();
        let stride = width as usize * 3;
        let mut sums = vec![[0u32; 3]; cols as usize];
        let mut cells = Vec::with_capacity((cols * rows) as usize);
        for r in 0..rows {
            let (ya, yb) = (y0 + r * h / rows, y0 + (r + 1) * h / rows);
            sums.fill([0; 3]);
            for y in ya..yb {
                let line = &rgb[y as usize * stride..(y as usize + 1) * stride];
                for (c, sum) in sums.iter_mut().enumerate() {
                    *sum = add_pixels(*sum, &line[edges[c]..edges[c + 1]]);
                }
            }
            for (c, sum) in sums.iter().enumerate() {
                let n = ((edges[c + 1] - edges[c]) / 3) as f32 * (yb - ya) as f32;
                cells.push(sum.map(|s| s as f32 / n));
            }
        }
        Some(Self { cols, rows, cells })
    }

    /// The signature of a whole frame's pixels.
    pub fn of_frame(frame: &super::Frame, rect: Option<Rect>) -> Option<Self> {
        let rect = rect.unwrap_or((0, 0, frame.width, frame.height));
        Self::of(&frame.rgb, frame.width, frame.height, rect)
    }

    /// Cells in the grid.
    pub fn cells(&self) -> usize {
        self.cells.len()
    }
}

/// Sums of R, G and B over a run of packed pixels. A cell's sum fits in u32 for any frame
/// moonwatch accepts (8192 px a side: 256x342 px a cell, 22 M at most).
fn add_pixels(mut sum: [u32; 3], px: &[u8]) -> [u32; 3] {
    for p in px.chunks_exact(3) {
        sum[0] += u32::from(p[0]);
        sum[1] += u32::from(p[1]);
        sum[2] += u32::from(p[2]);
    }
    sum
}

/// How one signature differs from another.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// Cells whose local change clears the threshold.
    pub changed: usize,
    /// Cells compared.
    pub cells: usize,
    /// The overall change of light, per channel (current over reference).
    pub gain: [f32; 3],
    /// The median local change over the cells: the noise level of this pair when the
    /// scene is still.
    pub median: f32,
    /// The largest local change of a cell.
    pub peak: f32,
}

impl Difference {
    /// The part of the region that changed, 0..1.
    pub fn area(&self) -> f32 {
        self.changed as f32 / self.cells.max(1) as f32
    }

    /// Whether the scene changed: enough cells changed, or the light as a whole did.
    pub fn is_change(&self) -> bool {
        self.changed >= MIN_CELLS.min(self.cells)
            || self.gain.iter().any(|g| (g - 1.0).abs() > MAX_GAIN_CHANGE)
    }
}

/// Compares `current` with `reference`; a cell whose local change exceeds `threshold`
/// counts as changed. `None` when the grids differ (another frame size or zone): treat as
/// changed.
pub fn difference(
    reference: &Signature,
    current: &Signature,
    threshold: f32,
) -> Option<Difference> {
    if (reference.cols, reference.rows) != (current.cols, current.rows) {
        return None;
    }
    let gain: [f32; 3] = std::array::from_fn(|ch| {
        let mut ratios: Vec<f32> = reference
            .cells
            .iter()
            .zip(&current.cells)
            .filter(|(a, _)| a[ch] >= GAIN_MIN_LEVEL)
            .map(|(a, b)| b[ch] / a[ch])
            .collect();
        // Too few lit cells to say: the light is taken as unchanged.
        if ratios.len() * 4 < reference.cells.len() {
            1.0
        } else {
            median(&mut ratios)
        }
    });
    let mut local: Vec<f32> = reference
        .cells
        .iter()
        .zip(&current.cells)
        .map(|(a, b)| {
            (0..3)
                .map(|ch| (b[ch] - gain[ch] * a[ch]).abs())
                .fold(0.0, f32::max)
        })
        .collect();
    let changed = local.iter().filter(|d| **d > threshold).count();
    let peak = local.iter().copied().fold(0.0, f32::max);
    Some(Difference {
        changed,
        cells: local.len(),
        gain,
        median: median(&mut local),
        peak,
    })
}

fn median(v: &mut [f32]) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    let mid = v.len() / 2;
    *v.select_nth_unstable_by(mid, f32::total_cmp).1
}

/// A region's noise, learnt from its own consecutive frames.
#[derive(Debug, Clone, Default)]
pub struct Noise {
    /// The median local change of each of the last frames against the one before.
    recent: VecDeque<f32>,
}

impl Noise {
    /// Takes the difference between two consecutive frames of the region.
    pub fn observe(&mut self, between_frames: &Difference) {
        if self.recent.len() == NOISE_FRAMES {
            self.recent.pop_front();
        }
        self.recent.push_back(between_frames.median);
    }

    /// The noise level: the median of the recent frames' medians (0 until a frame pair
    /// was seen: a new camera is taken as clean, so nothing is missed while it learns).
    pub fn level(&self) -> f32 {
        let mut v: Vec<f32> = self.recent.iter().copied().collect();
        median(&mut v)
    }

    /// The cell change that counts for this region.
    pub fn threshold(&self) -> f32 {
        (NOISE_FACTOR * self.level()).clamp(MIN_DELTA, MAX_DELTA)
    }
}

/// A region as a camera watches it: the signature of its newest frame and its noise.
#[derive(Debug, Clone)]
pub struct Watch {
    /// Content key and sequence number of the frame `current` is of.
    key: u64,
    seq: u64,
    current: std::sync::Arc<Signature>,
    noise: Noise,
}

impl Watch {
    /// Starts watching with a first frame.
    pub fn new(key: u64, seq: u64, signature: Signature) -> Self {
        Self {
            key,
            seq,
            current: std::sync::Arc::new(signature),
            noise: Noise::default(),
        }
    }

    /// The signature of frame `key` (sequence `seq`): the one kept when it is the frame
    /// last seen; else `make` is called, and a newer frame also teaches the noise level
    /// (its difference from the frame before) and becomes the one kept.
    pub fn signature(
        &mut self,
        key: u64,
        seq: u64,
        make: impl FnOnce() -> Option<Signature>,
    ) -> Option<std::sync::Arc<Signature>> {
        if key == self.key {
            return Some(self.current.clone());
        }
        let sig = std::sync::Arc::new(make()?);
        if seq >= self.seq {
            if let Some(d) = difference(&self.current, &sig, self.noise.threshold()) {
                self.noise.observe(&d);
            }
            self.key = key;
            self.seq = seq;
            self.current = sig.clone();
        }
        Some(sig)
    }

    pub fn noise(&self) -> &Noise {
        &self.noise
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 320x240 picture: a grey-green wall with a darker band and a lit patch.
    fn wall() -> Vec<u8> {
        let (w, h) = (320usize, 240usize);
        let mut rgb = vec![0u8; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                let base: [i32; 3] = if y > 180 {
                    [90, 100, 85]
                } else {
                    [120, 132, 112]
                };
                let lit = i32::from(x > 200 && y < 80) * 40;
                let p = (y * w + x) * 3;
                for c in 0..3 {
                    rgb[p + c] = (base[c] + lit + (x as i32 % 7)).clamp(0, 255) as u8;
                }
            }
        }
        rgb
    }

    fn sig(rgb: &[u8]) -> Signature {
        Signature::of(rgb, 320, 240, (0, 0, 320, 240)).expect("signature")
    }

    /// Paints `f(pixel)` over the rectangle.
    fn paint(rgb: &mut [u8], (x0, y0, x1, y1): Rect, f: impl Fn([u8; 3]) -> [u8; 3]) {
        for y in y0..y1 {
            for x in x0..x1 {
                let p = (y as usize * 320 + x as usize) * 3;
                let v = f([rgb[p], rgb[p + 1], rgb[p + 2]]);
                rgb[p..p + 3].copy_from_slice(&v);
            }
        }
    }

    #[test]
    fn a_grid_cell_holds_the_mean_colour_of_its_pixels() {
        let mut rgb = vec![0u8; 64 * 48 * 3];
        // The top-left 2x2 cell is red, all else black.
        for y in 0..2 {
            for x in 0..2 {
                rgb[(y * 64 + x) * 3] = 200;
            }
        }
        let s = Signature::of(&rgb, 64, 48, (0, 0, 64, 48)).expect("signature");
        assert_eq!((s.cols, s.rows, s.cells()), (32, 24, 768));
        assert_eq!(s.cells[0], [200.0, 0.0, 0.0]);
        assert_eq!(s.cells[1], [0.0; 3]);
        // A region smaller than the grid gets a cell per pixel.
        let tiny = Signature::of(&rgb, 64, 48, (0, 0, 4, 3)).expect("tiny");
        assert_eq!((tiny.cols, tiny.rows), (4, 3));
        // Nonsense rectangles and buffers give nothing, never a panic.
        assert!(Signature::of(&rgb, 64, 48, (4, 0, 4, 3)).is_none());
        assert!(Signature::of(&rgb, 64, 48, (0, 0, 65, 3)).is_none());
        assert!(Signature::of(&rgb[..10], 64, 48, (0, 0, 4, 3)).is_none());
    }

    #[test]
    fn the_same_picture_is_unchanged_and_light_changes_are_taken_out() {
        let a = wall();
        let d = difference(&sig(&a), &sig(&a), MIN_DELTA).expect("same grid");
        assert_eq!((d.changed, d.peak), (0, 0.0));
        assert!(!d.is_change());
        // Auto-exposure: every pixel 10% brighter.
        let mut b = a.clone();
        b.iter_mut()
            .for_each(|v| *v = (f32::from(*v) * 1.1).round().min(255.0) as u8);
        let d = difference(&sig(&a), &sig(&b), MIN_DELTA).expect("same grid");
        assert!(!d.is_change(), "{d:?}");
        assert!((d.gain[0] - 1.1).abs() < 0.02, "{d:?}");
        // Lights on: 60% brighter is a change even though it is uniform.
        b = a.clone();
        b.iter_mut()
            .for_each(|v| *v = (f32::from(*v) * 1.6).round().min(255.0) as u8);
        assert!(difference(&sig(&a), &sig(&b), MIN_DELTA)
            .expect("grid")
            .is_change());
    }

    #[test]
    fn a_change_of_colour_at_equal_brightness_counts() {
        let a = wall();
        let mut b = a.clone();
        // A blue coat on the grey-green wall: luma (0.299 R + 0.587 G + 0.114 B) unchanged,
        // 8% of the frame.
        paint(&mut b, (100, 60, 140, 210), |[r, g, bl]| {
            [
                r.saturating_sub(20),
                g.saturating_sub(1),
                bl.saturating_add(60),
            ]
        });
        let luma = |p: &[u8]| {
            p.chunks_exact(3)
                .map(|c| {
                    0.299 * f64::from(c[0]) + 0.587 * f64::from(c[1]) + 0.114 * f64::from(c[2])
                })
                .sum::<f64>()
                / (p.len() / 3) as f64
        };
        assert!((luma(&a) - luma(&b)).abs() < 0.1, "brightness matched");
        let d = difference(&sig(&a), &sig(&b), MIN_DELTA).expect("grid");
        assert!(d.is_change(), "{d:?}");
        assert!(d.area() > 0.05, "{d:?}");
    }

    #[test]
    fn a_person_at_the_far_side_of_the_frame_is_seen() {
        // 0.5% of the frame: 12x32 px of dark coat in a corner.
        let a = wall();
        let mut b = a.clone();
        paint(&mut b, (290, 10, 302, 42), |p| {
            p.map(|v| v.saturating_sub(50))
        });
        let d = difference(&sig(&a), &sig(&b), MIN_DELTA).expect("grid");
        assert!(d.is_change(), "{d:?}");
    }

    #[test]
    fn noise_sets_the_threshold_and_a_figure_still_clears_it() {
        // Deterministic noise of about sigma 8 per pixel.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut noisy = |rgb: &[u8]| -> Vec<u8> {
            rgb.iter()
                .map(|v| {
                    // Sum of four uniforms, scaled: roughly Gaussian, sigma 8.
                    let mut s = 0.0f32;
                    for _ in 0..4 {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        s += (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                    }
                    (f32::from(*v) + s * 8.0 * 3.46).round().clamp(0.0, 255.0) as u8
                })
                .collect()
        };
        let a = wall();
        let first = sig(&noisy(&a));
        let mut watch = Watch::new(1, 1, first.clone());
        for seq in 2..20u64 {
            let f = noisy(&a);
            watch.signature(seq, seq, || Some(sig(&f)));
        }
        let level = watch.noise().level();
        assert!(level > 0.5, "noise learnt: {level}");
        let threshold = watch.noise().threshold();
        for _ in 0..10 {
            let d = difference(&first, &sig(&noisy(&a)), threshold).expect("grid");
            assert!(!d.is_change(), "noise alone: {d:?} at {threshold}");
        }
        let mut b = a.clone();
        paint(&mut b, (40, 40, 56, 88), |p| {
            p.map(|v| v.saturating_sub(50))
        });
        let d = difference(&first, &sig(&noisy(&b)), threshold).expect("grid");
        assert!(d.is_change(), "1% figure: {d:?} at {threshold}");
    }

    #[test]
    fn another_grid_cannot_be_compared() {
        let a = sig(&wall());
        let b = Signature::of(&wall(), 320, 240, (0, 0, 10, 10)).expect("tiny");
        assert!(difference(&a, &b, MIN_DELTA).is_none());
    }
}
