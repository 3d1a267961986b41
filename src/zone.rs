//! Zones: regions of a camera's frame that a trigger or a request looks at instead of the
//! whole picture.
//!
//! A zone is a rectangle in relative coordinates (`[x_min, y_min, x_max, y_max]`, 0..1 from
//! the top-left corner). The model sees the crop, stretched to its input like any picture,
//! so a small region gets the encoder's whole resolution; boxes and points it finds are
//! mapped back into the full frame's coordinates. Crops of one frame and one zone have the
//! same content key, so triggers that share a zone share one encoded image. Pure.

use serde::{Deserialize, Serialize};

use crate::frame::{Frame, FrameError};
use crate::vision::parse::{BBox, Point};
use crate::vision::Answer;

/// Smallest side of a zone, relative to the frame.
pub const MIN_SIDE: f32 = 0.02;

/// A rectangle of the frame in relative coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(try_from = "[f32; 4]", into = "[f32; 4]")]
#[schemars(with = "[f32; 4]")]
pub struct Zone {
    pub x_min: f32,
    pub y_min: f32,
    pub x_max: f32,
    pub y_max: f32,
}

impl TryFrom<[f32; 4]> for Zone {
    type Error = String;
    fn try_from([x_min, y_min, x_max, y_max]: [f32; 4]) -> Result<Self, String> {
        let ok = [x_min, y_min, x_max, y_max]
            .iter()
            .all(|v| v.is_finite() && (0.0..=1.0).contains(v))
            // (A little slack for decimal fractions: 1.0 - 0.98 < 0.02 in f32.)
            && x_max - x_min >= MIN_SIDE - 1e-6
            && y_max - y_min >= MIN_SIDE - 1e-6;
        if ok {
            Ok(Self {
                x_min,
                y_min,
                x_max,
                y_max,
            })
        } else {
            Err(format!(
                "zone [{x_min}, {y_min}, {x_max}, {y_max}] must be [x_min, y_min, x_max, y_max] \
                 within 0..1, each side at least {MIN_SIDE}"
            ))
        }
    }
}

impl From<Zone> for [f32; 4] {
    fn from(z: Zone) -> Self {
        [z.x_min, z.y_min, z.x_max, z.y_max]
    }
}

/// A zone as a trigger or request names it: a zone of the camera's `zones` by name, or a
/// rectangle.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum ZoneRef {
    Named(String),
    Rect(Zone),
}

// By hand rather than `untagged`, so that a bad rectangle says what is wrong with it.
impl<'de> Deserialize<'de> for ZoneRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = ZoneRef;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a zone name or [x_min, y_min, x_max, y_max]")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ZoneRef, E> {
                Ok(ZoneRef::Named(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<ZoneRef, A::Error> {
                Zone::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(ZoneRef::Rect)
            }
        }
        d.deserialize_any(Visit)
    }
}

impl ZoneRef {
    /// The rectangle, looking names up in `zones`.
    pub fn resolve(
        &self,
        zones: &std::collections::BTreeMap<String, Zone>,
    ) -> Result<Zone, String> {
        match self {
            Self::Rect(z) => Ok(*z),
            Self::Named(n) => zones.get(n).copied().ok_or_else(|| {
                let known: Vec<&str> = zones.keys().map(String::as_str).collect();
                if known.is_empty() {
                    format!("no zone named {n:?}: this camera defines no zones")
                } else {
                    format!("no zone named {n:?} (this camera has {})", known.join(", "))
                }
            }),
        }
    }
}

impl Zone {
    /// The zone as a hashable key (its exact bits).
    pub fn key(&self) -> [u32; 4] {
        <[f32; 4]>::from(*self).map(f32::to_bits)
    }

    /// Pixel bounds of the zone in a `width` x `height` frame: at least one pixel a side.
    pub fn pixels(&self, width: u32, height: u32) -> (u32, u32, u32, u32) {
        let px = |v: f32, n: u32| ((v * n as f32).round() as u32).min(n);
        let (x0, y0) = (
            px(self.x_min, width).min(width - 1),
            px(self.y_min, height).min(height - 1),
        );
        let (x1, y1) = (
            px(self.x_max, width).max(x0 + 1),
            px(self.y_max, height).max(y0 + 1),
        );
        (x0, y0, x1, y1)
    }

    /// Whether the point (relative to the frame) lies in the zone, its edges included.
    pub fn contains(&self, p: Point) -> bool {
        (self.x_min..=self.x_max).contains(&p.x) && (self.y_min..=self.y_max).contains(&p.y)
    }

    /// The zone's pixels as a frame of their own (same time and sequence number).
    pub fn crop(&self, frame: &Frame) -> Result<Frame, FrameError> {
        let (x0, y0, x1, y1) = self.pixels(frame.width, frame.height);
        let (w, h) = (x1 - x0, y1 - y0);
        let stride = frame.width as usize * 3;
        let mut rgb = Vec::with_capacity(w as usize * h as usize * 3);
        for y in y0..y1 {
            let start = y as usize * stride + x0 as usize * 3;
            rgb.extend_from_slice(&frame.rgb[start..start + w as usize * 3]);
        }
        let mut out = Frame::from_rgb(w, h, rgb)?;
        out.captured_at = frame.captured_at;
        out.seq = frame.seq;
        Ok(out)
    }

    /// A point of the crop in the full frame's coordinates.
    pub fn point_to_frame(&self, p: Point) -> Point {
        Point {
            x: self.x_min + p.x * (self.x_max - self.x_min),
            y: self.y_min + p.y * (self.y_max - self.y_min),
        }
    }

    /// A box of the crop in the full frame's coordinates.
    pub fn box_to_frame(&self, b: BBox) -> BBox {
        let min = self.point_to_frame(Point {
            x: b.x_min,
            y: b.y_min,
        });
        let max = self.point_to_frame(Point {
            x: b.x_max,
            y: b.y_max,
        });
        BBox {
            x_min: min.x,
            y_min: min.y,
            x_max: max.x,
            y_max: max.y,
        }
    }

    /// An answer about the crop, with its boxes and points in the full frame's coordinates.
    pub fn answer_to_frame(&self, answer: &mut Answer) {
        match answer {
            Answer::Detect { objects, .. } => {
                for b in objects.iter_mut() {
                    *b = self.box_to_frame(*b);
                }
            }
            Answer::Point { points, .. } => {
                for p in points.iter_mut() {
                    *p = self.point_to_frame(*p);
                }
            }
            _ => {}
        }
    }
}

/// How many of `objects` (boxes in the frame's coordinates) have their centre in each of
/// `zones`, by zone name: what an object trigger over the whole frame counts per zone.
pub fn count_in<'z>(
    zones: impl IntoIterator<Item = (&'z String, &'z Zone)>,
    objects: &[BBox],
) -> std::collections::BTreeMap<String, usize> {
    zones
        .into_iter()
        .map(|(name, z)| {
            let n = objects
                .iter()
                .filter(|b| {
                    z.contains(Point {
                        x: (b.x_min + b.x_max) / 2.0,
                        y: (b.y_min + b.y_max) / 2.0,
                    })
                })
                .count();
            (name.clone(), n)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn objects_count_in_the_zone_that_holds_their_centre() {
        let zones: std::collections::BTreeMap<String, Zone> = [
            (
                "left".to_owned(),
                Zone {
                    x_min: 0.0,
                    y_min: 0.0,
                    x_max: 0.5,
                    y_max: 1.0,
                },
            ),
            (
                "right".to_owned(),
                Zone {
                    x_min: 0.5,
                    y_min: 0.0,
                    x_max: 1.0,
                    y_max: 1.0,
                },
            ),
            (
                "corner".to_owned(),
                Zone {
                    x_min: 0.9,
                    y_min: 0.9,
                    x_max: 1.0,
                    y_max: 1.0,
                },
            ),
        ]
        .into_iter()
        .collect();
        let b = |x0, x1| BBox {
            x_min: x0,
            y_min: 0.2,
            x_max: x1,
            y_max: 0.4,
        };
        // Centres at 0.2, 0.3 (left) and 0.7 (right); a box reaching into the left zone
        // with its centre on the right counts on the right only.
        let counts = count_in(&zones, &[b(0.1, 0.3), b(0.2, 0.4), b(0.45, 0.95)]);
        assert_eq!(counts["left"], 2);
        assert_eq!(counts["right"], 1);
        assert_eq!(counts["corner"], 0);
    }

    use super::*;

    fn zone(v: [f32; 4]) -> Zone {
        Zone::try_from(v).expect("zone")
    }

    #[test]
    fn zones_are_checked_when_read() {
        let ok: ZoneRef = serde_json::from_str("[0.5, 0.0, 1.0, 0.5]").unwrap();
        assert_eq!(ok, ZoneRef::Rect(zone([0.5, 0.0, 1.0, 0.5])));
        let named: ZoneRef = serde_json::from_str("\"door\"").unwrap();
        assert_eq!(named, ZoneRef::Named("door".into()));
        for bad in [
            "[0.5, 0.0, 0.4, 0.5]",
            "[0.0, 0.0, 1.5, 0.5]",
            "[0.0, 0.0, 0.01, 0.5]",
            "[-0.1, 0.0, 0.5, 0.5]",
            "[0.1, 0.2, 0.3]",
        ] {
            assert!(serde_json::from_str::<Zone>(bad).is_err(), "{bad}");
        }
        let zones = [("door".to_owned(), zone([0.0, 0.0, 0.5, 0.5]))].into();
        assert_eq!(named.resolve(&zones), Ok(zone([0.0, 0.0, 0.5, 0.5])));
        let e = ZoneRef::Named("gate".into()).resolve(&zones).unwrap_err();
        assert!(e.contains("door"), "{e}");
    }

    #[test]
    fn a_crop_holds_the_zones_pixels_and_maps_back() {
        // 4x2 frame whose red channel is the pixel's x, green its y.
        let mut rgb = Vec::new();
        for y in 0..2u8 {
            for x in 0..4u8 {
                rgb.extend([x, y, 0]);
            }
        }
        let f = Frame::from_rgb(4, 2, rgb).unwrap();
        let z = zone([0.5, 0.5, 1.0, 1.0]);
        let c = z.crop(&f).unwrap();
        assert_eq!((c.width, c.height), (2, 1));
        assert_eq!(&c.rgb[..], &[2, 1, 0, 3, 1, 0]);
        // The same zone of the same frame is the same picture for the prefix cache.
        assert_eq!(z.crop(&f).unwrap().key, c.key);
        assert_ne!(zone([0.0, 0.0, 0.5, 0.5]).crop(&f).unwrap().key, c.key);
        let b = z.box_to_frame(BBox {
            x_min: 0.0,
            y_min: 0.0,
            x_max: 0.5,
            y_max: 1.0,
        });
        assert_eq!(
            b,
            BBox {
                x_min: 0.5,
                y_min: 0.5,
                x_max: 0.75,
                y_max: 1.0
            }
        );
        // A sliver still crops to at least one pixel.
        let thin = zone([0.98, 0.98, 1.0, 1.0]).crop(&f).unwrap();
        assert_eq!((thin.width, thin.height), (1, 1));
    }
}
