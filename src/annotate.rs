//! Pictures where people would rather look: a frame with the boxes and points a detection
//! found drawn on it, labelled, and the zone it looked at outlined. Drawing is
//! embedded-graphics' (primitives and a built-in bitmap font) on the frame's pixels; pure.

use std::convert::Infallible;

use embedded_graphics::mono_font::ascii::{FONT_10X20, FONT_6X10};
use embedded_graphics::mono_font::MonoTextStyleBuilder;
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::{
    DrawTarget, Drawable, OriginDimensions, Pixel, Point as EgPoint, Primitive, RgbColor, Size,
};
use embedded_graphics::primitives::{Circle, PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Baseline, Text};

use crate::frame::Frame;
use crate::vision::Answer;
use crate::zone::Zone;

/// JPEG quality of annotated pictures.
const QUALITY: u8 = 85;
const MARK: Rgb888 = Rgb888::new(0, 230, 64);
const ZONE: Rgb888 = Rgb888::new(255, 196, 0);

/// The frame's pixels as an embedded-graphics target.
struct Canvas {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(self.width, self.height)
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = Infallible;
    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(
        &mut self,
        pixels: I,
    ) -> Result<(), Infallible> {
        for Pixel(p, c) in pixels {
            let (Ok(x), Ok(y)) = (u32::try_from(p.x), u32::try_from(p.y)) else {
                continue;
            };
            if x < self.width && y < self.height {
                let i = (y as usize * self.width as usize + x as usize) * 3;
                self.rgb[i..i + 3].copy_from_slice(&[c.r(), c.g(), c.b()]);
            }
        }
        Ok(())
    }
}

/// `frame` with the boxes or points of `answer` drawn on it, labelled `label`, and `zone`
/// (when the model looked at part of the frame) outlined; JPEG. Coordinates are the full
/// frame's.
pub fn annotated_jpeg(frame: &Frame, answer: &Answer, label: &str, zone: Option<Zone>) -> Vec<u8> {
    let mut c = Canvas {
        width: frame.width,
        height: frame.height,
        rgb: frame.rgb.to_vec(),
    };
    let (w, h) = (frame.width as f32, frame.height as f32);
    let stroke = (frame.width.min(frame.height) / 160).clamp(3, 8);
    let font = if frame.width.min(frame.height) >= 360 {
        &FONT_10X20
    } else {
        &FONT_6X10
    };
    let text = MonoTextStyleBuilder::new()
        .font(font)
        .text_color(Rgb888::BLACK)
        .background_color(MARK)
        .build();
    let px = |x: f32, y: f32| EgPoint::new((x * w).round() as i32, (y * h).round() as i32);
    let rect = |x0: f32, y0: f32, x1: f32, y1: f32| {
        let (a, b) = (px(x0, y0), px(x1, y1));
        Rectangle::with_corners(a, b)
    };
    let _ = match zone {
        Some(z) => rect(z.x_min, z.y_min, z.x_max, z.y_max)
            .into_styled(PrimitiveStyle::with_stroke(ZONE, stroke))
            .draw(&mut c),
        None => Ok(()),
    };
    match answer {
        Answer::Detect { objects, .. } => {
            for b in objects {
                let r = rect(b.x_min, b.y_min, b.x_max, b.y_max);
                let _ = r
                    .into_styled(PrimitiveStyle::with_stroke(MARK, stroke))
                    .draw(&mut c);
                // The label sits on the box's top edge, inside the picture.
                let at = EgPoint::new(
                    r.top_left.x,
                    r.top_left.y.max(font.character_size.height as i32),
                );
                let _ = Text::with_baseline(label, at, text, Baseline::Bottom).draw(&mut c);
            }
        }
        Answer::Point { points, .. } => {
            let d = stroke * 6;
            for p in points {
                let centre = px(p.x, p.y);
                let _ = Circle::with_center(centre, d)
                    .into_styled(PrimitiveStyle::with_stroke(MARK, stroke))
                    .draw(&mut c);
                let at = centre + EgPoint::new(d as i32, 0);
                let _ = Text::with_baseline(label, at, text, Baseline::Middle).draw(&mut c);
            }
        }
        _ => {}
    }
    match Frame::from_rgb(c.width, c.height, c.rgb) {
        Ok(f) => f.to_jpeg(QUALITY),
        Err(_) => frame.to_jpeg(QUALITY),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::parse::BBox;
    use crate::vision::Method;

    fn detect(objects: Vec<BBox>) -> Answer {
        Answer::Detect {
            present: Some(true),
            confidence: 0.9,
            objects,
            method: Method::PromptedBoxes,
            raw: String::new(),
            parsed: true,
        }
    }

    fn pixel(jpeg: &[u8], x: u32, y: u32) -> [u8; 3] {
        let img = image::load_from_memory(jpeg).expect("jpeg").to_rgb8();
        img.get_pixel(x, y).0
    }

    #[test]
    fn boxes_are_drawn_where_the_detection_found_them() {
        let f = Frame::from_rgb(400, 400, vec![0u8; 400 * 400 * 3]).unwrap();
        let b = BBox {
            x_min: 0.25,
            y_min: 0.5,
            x_max: 0.75,
            y_max: 0.9,
        };
        let jpeg = annotated_jpeg(&f, &detect(vec![b]), "car", None);
        let green = |p: [u8; 3]| p[1] > 150 && p[0] < 100 && p[2] < 140;
        // Left edge of the box at x = 100, halfway down it; the inside stays black.
        assert!(
            green(pixel(&jpeg, 100, 280)),
            "{:?}",
            pixel(&jpeg, 100, 280)
        );
        assert!(
            green(pixel(&jpeg, 300, 359)),
            "{:?}",
            pixel(&jpeg, 300, 359)
        );
        let inside = pixel(&jpeg, 200, 300);
        assert!(inside.iter().all(|&v| v < 20), "inside the box: {inside:?}");
        // Nothing drawn far from the box.
        assert!(!green(pixel(&jpeg, 20, 20)));
        // A zone is outlined in its own colour.
        let z = Zone::try_from([0.0, 0.0, 0.5, 0.5]).unwrap();
        let jpeg = annotated_jpeg(&f, &detect(vec![]), "car", Some(z));
        let p = pixel(&jpeg, 100, 199);
        assert!(p[0] > 150 && p[1] > 120 && p[2] < 100, "{p:?}");
    }
}
