//! Moondream2 2025-04-14's overlap crops (`model.crops = "reference"`), as its reference
//! code makes and joins them (`moondream/torch/image_crops.py`, `vision.py`,
//! `moondream.py::_run_vision_encoder` at vikhyat/moondream f660ccb):
//!
//! 1. [`Tiling::select`] picks a grid of overlapping 378x378 crops for the picture (at most
//!    `max_crops`), each sharing a margin of 4 patches with its neighbours;
//! 2. [`overlap_crops`] resizes the picture to fit that grid exactly and cuts the crops,
//!    and resizes the whole picture to 378x378 (the global crop), both as libvips'
//!    `resize` does (`Frame::resized_like_vips`, pixel for pixel);
//! 3. each crop's 27x27 grid of encoder features is stitched without the margins its
//!    neighbours also cover, and the stitched grid is average-pooled back to 27x27
//!    ([`stitch_and_pool`]);
//! 4. the projector takes `[global, pooled]`, 2304 wide (`llama::CropProjector`).
//!
//! Pure: pixels and feature rows in, pixels and feature rows out.

use std::sync::Arc;

use crate::frame::Frame;

/// The encoder's input side (`crop_size`).
pub const CROP: u32 = 378;
/// The side of a patch (`enc_patch_size`).
pub const PATCH: u32 = 14;
/// Patches a crop shares with each neighbour (`overlap_margin`).
pub const MARGIN: u32 = 4;
/// Patches along a crop's side (27).
pub const GRID: usize = (CROP / PATCH) as usize;
/// The projector's first layer, the half that takes the whole picture's features, as
/// `model convert` writes it into the vision GGUF.
pub const PROJ_GLOBAL: &str = "mm.crops.global.weight";
/// ... and the half that takes the crops' pooled features.
pub const PROJ_LOCAL: &str = "mm.crops.local.weight";
/// The reference's `max_crops`.
pub const DEFAULT_MAX_CROPS: u32 = 12;
/// The most local crops `model.max_crops` allows.
pub const MAX_CROPS: u32 = 16;

/// Pixels a crop adds to the picture beyond its margins: (27 - 2 x 4) x 14 = 266.
const WINDOW: u32 = (CROP / PATCH - 2 * MARGIN) * PATCH;
/// Both margins in pixels: 2 x 4 x 14 = 112.
const MARGINS: u32 = 2 * MARGIN * PATCH;

/// A grid of local crops: `rows` x `cols`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    pub rows: u32,
    pub cols: u32,
}

impl Tiling {
    /// The reference's `select_tiling(height - 112, width - 112, 266, max_crops)`.
    pub fn select(width: u32, height: u32, max_crops: u32) -> Self {
        let h = height.saturating_sub(MARGINS);
        let w = width.saturating_sub(MARGINS);
        let max_crops = max_crops.max(1);
        let (rows, cols) = select_tiling(h, w, WINDOW, max_crops);
        // The reference's proportional branch can exceed `max_crops` for very long
        // pictures (1x47 for 100000x379); the grid is bounded here.
        let rows = rows.min(max_crops);
        Self {
            rows,
            cols: cols.min(max_crops / rows),
        }
    }

    /// Local crops in the grid.
    pub fn count(self) -> usize {
        self.rows as usize * self.cols as usize
    }

    /// The size the picture is resized to before it is cut: the grid exactly.
    pub fn target(self) -> (u32, u32) {
        (self.cols * WINDOW + MARGINS, self.rows * WINDOW + MARGINS)
    }
}

/// `select_tiling` of `image_crops.py`, line for line (sizes in pixels).
fn select_tiling(height: u32, width: u32, crop: u32, max_crops: u32) -> (u32, u32) {
    if height <= crop || width <= crop {
        return (1, 1);
    }
    let (h, w) = (f64::from(height), f64::from(width));
    let min_h = height.div_ceil(crop);
    let min_w = width.div_ceil(crop);
    if min_h * min_w > max_crops {
        let ratio = (f64::from(max_crops) / f64::from(min_h * min_w)).sqrt();
        let fit = |m: u32| ((f64::from(m) * ratio).floor() as u32).max(1);
        return (fit(min_h), fit(min_w));
    }
    let max = f64::from(max_crops);
    let mut h_tiles = ((max * h / w).sqrt().floor() as u32).max(min_h);
    let mut w_tiles = ((max * w / h).sqrt().floor() as u32).max(min_w);
    if h_tiles * w_tiles > max_crops {
        if w_tiles > h_tiles {
            w_tiles = max_crops / h_tiles;
        } else {
            h_tiles = max_crops / w_tiles;
        }
    }
    (h_tiles.max(1), w_tiles.max(1))
}

/// The pictures the encoder sees: the global crop first, then the local crops row by row
/// (each `CROP` x `CROP` RGB).
#[derive(Debug, Clone)]
pub struct Crops {
    pub tiling: Tiling,
    pub pictures: Vec<Arc<[u8]>>,
}

impl Crops {
    /// One crop: the picture is its own only local crop, so the projector's two halves see
    /// the same features and fold into one layer (what the converted projector holds).
    pub fn is_single(&self) -> bool {
        self.tiling.count() == 1
    }
}

/// `overlap_crop_image` of `image_crops.py`: the global crop, then the local crops.
///
/// With a 1x1 grid the only local crop is the global crop itself (the picture resized to
/// 378x378 both times), so only the global one is returned.
pub fn overlap_crops(frame: &Frame, max_crops: u32) -> Crops {
    let tiling = Tiling::select(frame.width, frame.height, max_crops);
    let global = frame.resized_like_vips(CROP, CROP);
    if tiling.count() == 1 {
        return Crops {
            tiling,
            pictures: vec![global],
        };
    }
    let (tw, th) = tiling.target();
    let whole = frame.resized_like_vips(tw, th);
    let mut pictures = Vec::with_capacity(1 + tiling.count());
    pictures.push(global);
    let side = CROP as usize;
    for i in 0..tiling.rows {
        for j in 0..tiling.cols {
            let (x0, y0) = ((j * WINDOW) as usize, (i * WINDOW) as usize);
            let mut crop = vec![0u8; side * side * 3];
            // The grid fits the resized picture exactly, so every crop is whole; the
            // bounds are kept as the reference's (zero padding past the edge).
            let w = side.min(tw as usize - x0);
            for y in 0..side.min(th as usize - y0) {
                let from = ((y0 + y) * tw as usize + x0) * 3;
                crop[y * side * 3..(y * side + w) * 3].copy_from_slice(&whole[from..from + w * 3]);
            }
            pictures.push(crop.into());
        }
    }
    Crops { tiling, pictures }
}

/// `reconstruct_from_crops` (with `patch_size = 1`) then `adaptive_avg_pool2d` to 27x27:
/// the local crops' feature grids (`GRID * GRID` rows of `dim` each, row-major, crops in
/// grid order) become one grid of 27x27 rows.
pub fn stitch_and_pool(local: &[Vec<f32>], tiling: Tiling, dim: usize) -> Vec<f32> {
    let (tr, tc) = (tiling.rows as usize, tiling.cols as usize);
    let m = MARGIN as usize;
    let inner = GRID - 2 * m;
    let (out_h, out_w) = (inner * tr + 2 * m, inner * tc + 2 * m);
    let mut grid = vec![0f32; out_h * out_w * dim];
    for (i, crop) in local.iter().enumerate().take(tr * tc) {
        let (ty, tx) = (i / tc, i % tc);
        let x_start = if tx == 0 { 0 } else { m };
        let x_end = if tx == tc - 1 { GRID } else { GRID - m };
        let y_start = if ty == 0 { 0 } else { m };
        let y_end = if ty == tr - 1 { GRID } else { GRID - m };
        let (out_x, out_y) = (tx * inner, ty * inner);
        for y in y_start..y_end {
            let from = (y * GRID + x_start) * dim;
            let to = ((out_y + y) * out_w + out_x + x_start) * dim;
            let n = (x_end - x_start) * dim;
            grid[to..to + n].copy_from_slice(&crop[from..from + n]);
        }
    }
    adaptive_avg_pool(&grid, out_h, out_w, GRID, GRID, dim)
}

/// `torch.nn.functional.adaptive_avg_pool2d` over an `h` x `w` grid of `dim`-wide rows:
/// output cell `i` averages input rows `floor(i * h / oh) .. ceil((i + 1) * h / oh)`.
fn adaptive_avg_pool(
    grid: &[f32],
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    dim: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; oh * ow * dim];
    let span = |i: usize, n: usize, o: usize| (i * n / o, ((i + 1) * n).div_ceil(o));
    for oy in 0..oh {
        let (y0, y1) = span(oy, h, oh);
        for ox in 0..ow {
            let (x0, x1) = span(ox, w, ow);
            let cell = &mut out[(oy * ow + ox) * dim..(oy * ow + ox + 1) * dim];
            for y in y0..y1 {
                for x in x0..x1 {
                    let row = &grid[(y * w + x) * dim..(y * w + x + 1) * dim];
                    for (c, v) in cell.iter_mut().zip(row) {
                        *c += v;
                    }
                }
            }
            let n = ((y1 - y0) * (x1 - x0)) as f32;
            for c in cell.iter_mut() {
                *c /= n;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiling_is_the_references() {
        // Values from `select_tiling` in image_crops.py (f660ccb), run by hand.
        let cases = [
            ((378, 378, 12), (1, 1)),
            ((320, 240, 12), (1, 1)),
            ((640, 480, 12), (2, 4)),
            ((1280, 720, 12), (2, 4)),
            ((1920, 1080, 12), (2, 4)),
            ((720, 1280, 12), (4, 2)),
            ((1280, 720, 4), (1, 2)),
            ((1280, 720, 1), (1, 1)),
            ((4000, 500, 12), (1, 9)),
            // The reference gives 1x13 here (and 1x47 for 100000x379): past max_crops,
            // which moonwatch keeps to.
            ((8192, 379, 12), (1, 12)),
        ];
        for ((w, h, max), (rows, cols)) in cases {
            assert_eq!(
                Tiling::select(w, h, max),
                Tiling { rows, cols },
                "{w}x{h} max {max}"
            );
        }
        assert_eq!(Tiling { rows: 2, cols: 4 }.target(), (1176, 644));
    }

    #[test]
    fn crops_cover_the_resized_picture_with_their_margins() {
        // A picture whose pixels say where they are: each crop must start 266 px after
        // the one before it in the picture resized to 1176x644.
        let (w, h) = (1176u32, 644u32);
        let mut rgb = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                rgb.extend([
                    (x % 251) as u8,
                    (y % 251) as u8,
                    ((x / 251) * 16 + y / 251) as u8,
                ]);
            }
        }
        let frame = Frame::from_rgb(w, h, rgb.clone()).unwrap();
        let crops = overlap_crops(&frame, 12);
        assert_eq!(crops.tiling, Tiling { rows: 2, cols: 4 });
        assert_eq!(crops.pictures.len(), 9);
        for (k, crop) in crops.pictures[1..].iter().enumerate() {
            let (i, j) = (k as u32 / 4, k as u32 % 4);
            for (cy, cx) in [(0u32, 0u32), (377, 377), (100, 250)] {
                let (x, y) = (j * 266 + cx, i * 266 + cy);
                let got = &crop[((cy * 378 + cx) * 3) as usize..][..3];
                let want = &rgb[((y * w + x) * 3) as usize..][..3];
                assert_eq!(got, want, "crop {k} at {cx},{cy}");
            }
        }
        // A picture that needs one crop is one crop.
        let small = Frame::from_rgb(300, 200, vec![7; 300 * 200 * 3]).unwrap();
        let one = overlap_crops(&small, 12);
        assert!(one.is_single());
        assert_eq!(one.pictures.len(), 1);
        assert_eq!(one.pictures[0].len(), 378 * 378 * 3);
    }

    #[test]
    fn stitching_keeps_each_patch_once_and_pooling_averages_as_torch() {
        // Crops of a 1x2 grid whose features are their grid column in the stitched
        // picture: stitching must rebuild 0..46 along a row.
        let tiling = Tiling { rows: 1, cols: 2 };
        let crop = |t: usize| -> Vec<f32> {
            (0..GRID * GRID)
                .map(|p| (t * 19 + p % GRID) as f32)
                .collect()
        };
        let pooled = stitch_and_pool(&[crop(0), crop(1)], tiling, 1);
        assert_eq!(pooled.len(), GRID * GRID);
        // Width 46 pooled to 27: cell i averages columns floor(46i/27)..ceil(46(i+1)/27).
        for i in 0..GRID {
            let (a, b) = (i * 46 / 27, ((i + 1) * 46).div_ceil(27));
            let want = (a..b).map(|x| x as f32).sum::<f32>() / (b - a) as f32;
            assert!(
                (pooled[i] - want).abs() < 1e-5,
                "{i}: {} vs {want}",
                pooled[i]
            );
            // Height 27 pooled to 27 is every row as it is.
            assert_eq!(pooled[GRID * 13 + i], pooled[i]);
        }
        // A 1x1 grid pools to itself.
        let one: Vec<f32> = (0..GRID * GRID * 2).map(|v| v as f32).collect();
        assert_eq!(
            stitch_and_pool(std::slice::from_ref(&one), Tiling { rows: 1, cols: 1 }, 2),
            one
        );
    }
}
